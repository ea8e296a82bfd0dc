"""
Checkpoint files: one per save, holding everything needed to resume or to sample.

A save writes ``.ckpt_<step>.pt.tmp`` and renames it to ``ckpt_<step>.pt`` only once it
is complete and flushed, so a killed process never leaves a half-written file under a
final name; leftover temporary files are ignored by ``find_latest``.
"""

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

FORMAT = "video-diffusion-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


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
    tmp = run_dir / f".{final.name}.tmp"
    payload = {"format": FORMAT, "version": VERSION, "step": step, **state}
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink()
    return final


def load_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise ValueError(f"{str(path)!r} is not a readable checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a video-diffusion checkpoint (no '{FORMAT}' format tag)")
    if state.get("version") != VERSION:
        raise ValueError(f"{str(path)!r} has checkpoint version {state.get('version')}; this code reads {VERSION}")
    return state
