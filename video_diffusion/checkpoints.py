"""
Checkpoint files: one per save, holding everything needed to resume or to sample.

A save writes ``.ckpt_<step>.pt.tmp`` and renames it to ``ckpt_<step>.pt`` only once it
is complete and flushed, so a killed process never leaves a half-written file under a
final name. A failed save (disk full, run directory not writable) removes its temporary
file and leaves the previous checkpoints as they were; ``remove_stale_temporaries``
clears what a killed process left.

Lineage. Resuming from a checkpoint older than the newest in the run directory (a
rollback, or a newest file that is unreadable) starts a new branch: the newer files of
the old branch are moved to ``<run_dir>/abandoned/<time>_after_<step>/`` before any step
is taken, so pruning can never delete the new branch's files nor a relaunch resume the
old branch. Every checkpoint records the file its branch was forked from, so a relaunch
that repeats ``--resume_checkpoint X`` (a requeued job) continues the branch forked
from X instead of rolling back again.

Loading never runs code: ``torch.load(weights_only=True)`` with an allow-list of the few
numpy globals a checkpoint holds (the numpy RNG state and the timestep sampler's loss
history are numpy arrays). A file that needs anything else is refused before any of it
is executed.
"""

import errno
import os
import pickle
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .files import write_atomically

FORMAT = "video-diffusion-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (the previous ones are intact)."""


def _numpy_globals() -> list:
    """The numpy globals a checkpoint may name: array reconstruction and dtypes, nothing callable beyond that."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "uint32", "bool")]
    return [_reconstruct, np.ndarray, np.dtype, *dtypes]


def checkpoint_name(step: int) -> str:
    return f"ckpt_{step:07d}.pt"


def list_checkpoints(run_dir) -> List[Path]:
    """Complete checkpoints in ``run_dir``, oldest first (temporary files excluded)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def find_latest(run_dir) -> Optional[Path]:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def save_checkpoint(run_dir, step: int, state: Dict[str, Any], keep: int = 3) -> Path:
    """
    Atomically write ``state`` as the checkpoint of ``step``, then delete all but the newest ``keep``.

    :return: the final path.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / checkpoint_name(step)
    payload = {"format": FORMAT, "version": VERSION, "step": step, **state}
    try:  # the temporary .<name>.tmp is removed on any failure
        write_atomically(final, lambda f: torch.save(payload, f))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        raise CheckpointWriteError(f"could not write checkpoint {final}: {write_failure_cause(e, run_dir, payload)}. "
                                   f"The previous checkpoints in {run_dir} are intact.") from None
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink()
    return final


def state_bytes(state) -> int:
    """The bytes of the tensors and arrays in a (nested) state: about what its checkpoint file takes."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, np.ndarray):
        return state.nbytes
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def _megabytes(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MB"


def write_failure_cause(error: BaseException, folder, state) -> str:
    """
    Why writing ``state`` into ``folder`` failed, named by cause: out of space (with the free
    space on that filesystem and the checkpoint's size), a folder that cannot be written (no
    permission, read-only filesystem), or the error itself.
    """
    folder = Path(folder)
    code = getattr(error, "errno", None)
    needed = state_bytes(state)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    # torch.save reports a full disk as a RuntimeError ("unexpected pos ..."), without errno
    if code in (errno.ENOSPC, errno.EDQUOT) or (code is None and free is not None and free < needed + 2 ** 20):
        where = f"{_megabytes(free)} free" if free is not None else "free space unknown"
        return (f"out of space on the filesystem of {folder} ({where}; the checkpoint needs about "
                f"{_megabytes(needed)})")
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to write in {folder}"
    if code == errno.EROFS:
        return f"{folder} is on a read-only filesystem"
    return f"{type(error).__name__}: {error}"


def remove_stale_temporaries(run_dir) -> List[Path]:
    """Delete the temporary files of saves that a killed process never finished; returns them."""
    run_dir = Path(run_dir)
    stale = sorted(run_dir.glob(".ckpt_*.pt.tmp")) if run_dir.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    """
    Load a checkpoint written by ``save_checkpoint``; a clear error for anything else.
    Nothing in the file is executed: a pickle that names a global outside the allow-list
    (e.g. ``os.system``) is refused.
    """
    path = Path(path)
    if path.is_dir():
        newest = find_latest(path)
        hint = f" (its newest checkpoint: {newest})" if newest else " (it holds no ckpt_*.pt file)"
        raise ValueError(f"checkpoint {str(path)!r} is a folder; give a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    with open(path, "rb") as f:  # every torch.save file since torch 1.6 is a zip archive
        if f.read(4) != b"PK\x03\x04":
            raise ValueError(f"{str(path)!r} is not a checkpoint: a checkpoint is a torch zip archive, this file "
                             "is not one")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it names {found.group(1)}" if found else "it holds objects beyond tensors and numbers"
        raise ValueError(f"{str(path)!r} is refused: {what}, which a checkpoint never holds and loading could "
                         "execute. Only tensors, numbers, strings and numpy arrays are loaded.") from None
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise ValueError(f"{str(path)!r} is not a readable checkpoint: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a video-diffusion checkpoint (no '{FORMAT}' format tag)")
    if state.get("version") != VERSION:
        raise ValueError(f"{str(path)!r} has checkpoint version {state.get('version')}; this code reads {VERSION}")
    return state


def checkpoint_step(path) -> Optional[int]:
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


@dataclass
class ResumePoint:
    """Where a run resumes: the checkpoint, its contents, and what was passed over on the way."""
    path: Path
    state: Dict[str, Any]
    unreadable: List[Tuple[Path, str]] = field(default_factory=list)  # newer files that could not be loaded
    continued_branch: bool = False  # --resume_checkpoint X repeated: the branch forked from X goes on

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def lineage(self) -> Dict[str, Any]:
        return dict(self.state.get("lineage") or {"forked_from": "", "forked_at": 0})


def _newest_readable(run_dir, newer_than: int = -1):
    """The newest checkpoint of ``run_dir`` that loads, and the (path, reason) of newer ones that do not."""
    unreadable = []
    for path in reversed(list_checkpoints(run_dir)):
        if checkpoint_step(path) <= newer_than:
            break
        try:
            return path, load_checkpoint(path), unreadable
        except FileNotFoundError:  # moved aside by another rank meanwhile
            continue
        except ValueError as e:
            unreadable.append((path, str(e)))
    return None, None, unreadable


def find_resume_point(run_dir, explicit: str = "") -> Optional[ResumePoint]:
    """
    The checkpoint a run resumes from: ``explicit`` (``--resume_checkpoint``) if given,
    unless the run directory already holds the branch forked from it (then its newest
    checkpoint); else the newest checkpoint of ``run_dir`` that loads, passing over
    unreadable newer ones; None for a fresh run.
    """
    if explicit:
        target = Path(explicit).resolve()
        newest, state, unreadable = _newest_readable(run_dir)
        if newest is not None and (state.get("lineage") or {}).get("forked_from") == str(target):
            return ResumePoint(newest, state, unreadable, continued_branch=True)
        return ResumePoint(Path(explicit), load_checkpoint(explicit))
    path, state, unreadable = _newest_readable(run_dir)
    if path is None:
        if unreadable:
            raise ValueError(f"no checkpoint in {run_dir} can be loaded: "
                             + "; ".join(reason for _, reason in unreadable))
        return None
    return ResumePoint(path, state, unreadable)


def abandoned_checkpoints(run_dir, resume: Optional[ResumePoint]) -> List[Path]:
    """The checkpoints of ``run_dir`` that are not on the branch a run resumes: every one newer
    than the resume point, or all of them when the resume point lies outside ``run_dir``."""
    ckpts = list_checkpoints(run_dir)
    if resume is None:
        return ckpts
    if Path(resume.path).resolve().parent != Path(run_dir).resolve():
        return ckpts
    return [p for p in ckpts if checkpoint_step(p) > resume.step]


def set_aside(run_dir, paths: List[Path], after_step: int) -> Optional[Path]:
    """Move ``paths`` into ``<run_dir>/abandoned/<time>_after_<step>/``; returns that folder (None if nothing moved)."""
    if not paths:
        return None
    dest = Path(run_dir) / "abandoned" / f"{time.strftime('%Y%m%d-%H%M%S')}_after_{after_step:07d}"
    dest.mkdir(parents=True, exist_ok=True)
    for p in paths:
        os.replace(p, dest / p.name)
    return dest


def fingerprint_changes(stored: Dict, current: Dict) -> List[str]:
    """'key: old -> new' for every part of the training data's fingerprint that differs."""
    if not stored or not current or stored == current:
        return []
    return [f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(stored) | set(current))
            if stored.get(k) != current.get(k)]


def prepare_run_dir(run_dir, resume: Optional[ResumePoint], log) -> None:
    """
    Before the first step (main rank): remove temporaries a killed save left, and set aside
    the checkpoints that are not on the branch being resumed. ``log`` takes each message.
    """
    for p in remove_stale_temporaries(run_dir):
        log(f"removed {p.name}, left by a save that never finished")
    if resume is not None:
        for path, reason in resume.unreadable:
            log(f"warning: {reason}; resuming from the newest complete checkpoint instead")
    moved = abandoned_checkpoints(run_dir, resume)
    dest = set_aside(run_dir, moved, resume.step if resume else 0)
    if dest is not None:
        log(f"moved {len(moved)} checkpoint(s) not on the resumed branch ({', '.join(p.name for p in moved)}) "
            f"to {dest}")
