"""
Files on disk. Result files are written atomically: the content goes to a hidden temporary
name in the same folder and is renamed into place only once complete, so a killed or
failed run never leaves a truncated file under the final name (and a reader never sees
half of one). Output folders are checked before any work is done.
"""

import json
import os
from pathlib import Path
from typing import Callable, IO

import numpy as np


def write_atomically(path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path, obj) -> Path:
    return write_atomically(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def write_npz(path, **arrays) -> Path:
    """``np.savez`` to exactly ``path`` (a file object: numpy adds no suffix)."""
    return write_atomically(path, lambda f: np.savez(f, **arrays))


def write_image(path, image) -> Path:
    """A PIL image, in the format of ``path``'s suffix."""
    fmt = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG")
    return write_atomically(path, lambda f: image.save(f, format=fmt))


def check_output_folder(path, flag: str) -> None:
    """An output folder may exist or be created, but not be a file (or lie below one)."""
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"{flag} {str(path)!r}: {str(p)!r} is a file, not a folder")
            return
