"""
The command line's building blocks, one of each: flags generated from a dataclass's fields,
booleans that read "true" / "false", and comma-separated lists.
"""

import argparse
import dataclasses
from typing import Any, Callable, List, Optional, Sequence


def str2bool(v) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).lower()
    if s in ("1", "true", "yes", "y", "t"):
        return True
    if s in ("0", "false", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {v!r}")


def add_dataclass_flags(group, cls, exclude: Sequence[str] = (), default: Optional[Callable[[Any], Any]] = None,
                        help_note: Optional[Callable[[Any], str]] = None) -> None:
    """
    One ``--name`` flag per field of the dataclass ``cls`` (but ``exclude``), typed by its
    default, with the field's ``help`` (and its ``choices``) from its metadata.

    :param default: field -> the flag's default (e.g. ``argparse.SUPPRESS``: only given flags
        appear in the namespace); the field's own default when None.
    :param help_note: field -> what the help says after "default: ..." (e.g. the presets' values).
    """
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        value = default(f) if default is not None else f.default
        shown = f.default if value is argparse.SUPPRESS else value
        text = f"{f.metadata['help']} (default: {shown!r}{help_note(f) if help_note else ''})"
        kw: dict = dict(default=value, help=text.replace("%", "%%"))
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if isinstance(f.default, bool):
            kw.update(type=str2bool, nargs="?", const=True, metavar="BOOL")
        else:
            kw["type"] = type(f.default)
        group.add_argument(f"--{f.name}", **kw)


def parse_list(spec: str, kind: Callable = str, flag: str = "", what: str = "values") -> list:
    """'a, b,c' -> [kind('a'), kind('b'), kind('c')] (blanks skipped); an error names ``flag``."""
    try:
        return [kind(x.strip()) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated {what}, got {spec!r}") from None


def parse_int_list(spec: str, flag: str) -> List[int]:
    return parse_list(spec, int, flag, "integers")


def parse_float_list(spec: str, flag: str) -> List[float]:
    return parse_list(spec, float, flag, "numbers")
