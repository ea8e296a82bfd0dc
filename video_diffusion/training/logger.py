"""
A run's logger: a readable ``log.txt``, ``progress.csv`` and TensorBoard events.

One object per run, passed explicitly (no singleton). Only the main rank writes; on the
other ranks every method is a no-op, so callers never need ``if rank == 0`` around logging.

A run resumed at step S drops the progress rows and TensorBoard points after S (they
will be computed again), so no step appears twice; the dropped rows are kept in
``abandoned/`` beside any set-aside checkpoints.
"""

import csv
import sys
import time
from pathlib import Path
from typing import Dict

PROGRESS_FIELDS = ("step", "samples", "loss", "mse", "vb", "loss_q0", "loss_q1", "loss_q2", "loss_q3",
                   "grad_norm", "lr", "steps_per_s", "videos_per_s", "skipped_steps", "preview_psnr", "preview_ssim")


def _write_rows(path: Path, rows) -> None:
    """progress.csv rows under today's header, via a temporary file."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PROGRESS_FIELDS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _drop_rows_after(csv_path: Path, step: int) -> int:
    """Remove the rows of progress.csv beyond ``step`` (copied to abandoned/); returns how many."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    later = [bool(r.get("step")) and int(float(r["step"])) > step for r in rows]
    keep = [r for r, x in zip(rows, later) if not x]
    dropped = [r for r, x in zip(rows, later) if x]
    if not dropped:
        return 0
    aside = csv_path.parent / "abandoned" / f"progress_after_{step:07d}_{time.strftime('%Y%m%d-%H%M%S')}.csv"
    aside.parent.mkdir(parents=True, exist_ok=True)
    _write_rows(aside, dropped)
    _write_rows(csv_path, keep)
    return len(dropped)


def _upgrade_header(csv_path: Path) -> None:
    """A progress.csv written by an older version (fewer columns) is rewritten with today's header."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
        f.seek(0)
        header = next(csv.reader(f), [])
    if tuple(header) == PROGRESS_FIELDS:
        return
    unknown = set(header) - set(PROGRESS_FIELDS)
    if unknown:
        raise ValueError(f"{csv_path} has columns {sorted(unknown)} that this version does not write; "
                         "move it away or use a new --log_dir")
    _write_rows(csv_path, rows)


class RunLogger:
    """
    :param run_dir: where log.txt, progress.csv and tb/ live.
    :param enabled: False on every rank but the main one.
    :param echo: also print log lines.
    :param resume_step: the step a resumed run starts from: progress rows and TensorBoard
        points after it are dropped. None = keep everything (a fresh run in a new directory).
    """

    def __init__(self, run_dir, enabled: bool = True, echo: bool = True, resume_step: int = None):
        self.enabled = enabled
        self.echo = echo
        self.run_dir = Path(run_dir)
        self._csv_file = self._csv = self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._text = open(self.run_dir / "log.txt", "a", buffering=1)
        csv_path = self.run_dir / "progress.csv"
        new = not csv_path.exists() or csv_path.stat().st_size == 0
        if not new:
            _upgrade_header(csv_path)
        dropped = _drop_rows_after(csv_path, resume_step) if resume_step is not None and not new else 0
        self._csv_file = open(csv_path, "a", newline="", buffering=1)
        self._csv = csv.DictWriter(self._csv_file, fieldnames=PROGRESS_FIELDS)
        if new:
            self._csv.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
        except ImportError:  # tensorboard is optional
            self._tb = None
        if dropped:
            self.info(f"dropped {dropped} progress.csv row(s) after step {resume_step} (they are recomputed); "
                      "kept in abandoned/")

    @property
    def has_tensorboard(self) -> bool:
        return self._tb is not None

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        self._text.write(line + "\n")
        if self.echo:
            if self._bar is not None:
                self._bar.write(line)  # keeps the bar intact below the log lines
            else:
                print(line, flush=True)

    _bar = None

    def row(self, values: Dict[str, float]) -> None:
        """One progress row (fields of PROGRESS_FIELDS), to progress.csv and TensorBoard."""
        if not self.enabled:
            return
        self._csv.writerow({k: values.get(k, "") for k in PROGRESS_FIELDS})
        if self._tb is not None:
            for k, v in values.items():
                if k not in ("step", "samples") and v != "" and v is not None:
                    self._tb.add_scalar(f"train/{k}", v, values["step"])

    def image(self, tag: str, image, step: int) -> None:
        """A uint8 [H, W, 3] picture to TensorBoard (when installed)."""
        if self.enabled and self._tb is not None:
            self._tb.add_image(tag, image, step, dataformats="HWC")

    def progress_bar(self, total: int, initial: int):
        """A tqdm bar when the main rank writes to a terminal; None otherwise."""
        if not self.enabled or not sys.stderr.isatty():
            return None
        from tqdm import tqdm
        self._bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)
        return self._bar

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        for f in (self._text, self._csv_file):
            f.close()
        if self._tb is not None:
            self._tb.close()
