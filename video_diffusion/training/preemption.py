"""
Stopping on a signal: SIGTERM (SLURM, Kubernetes, ``kill``), SIGINT (Ctrl-C) and SIGUSR1
(SLURM's ``--signal`` warning before the time limit).

The handler only records the request. The training loop adds it to the statistics that
the ranks already all-reduce every step, so every rank learns of it at the same step,
finishes that step, writes one complete checkpoint together and exits with
``EXIT_PREEMPTED``. A second Ctrl-C stops at once, without a checkpoint.
"""

import signal
from typing import Optional

from ..signals import SIGNALS

# Exit status of a run stopped by a signal after saving: EX_TEMPFAIL ("try again later").
# A job script requeues on it; any other non-zero status is a real failure.
EXIT_PREEMPTED = 75


class Preempted(Exception):
    """Raised by the training loop after the checkpoint of a requested stop is written."""

    def __init__(self, signal_name: str, step: int):
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint saved. Relaunch the same command "
                         f"to continue (exit status {EXIT_PREEMPTED})")
        self.signal_name, self.step = signal_name, step


class StopRequests:
    """A context manager that turns the stop signals into a flag (and restores the old handlers on exit)."""

    def __init__(self):
        self.signal_name: Optional[str] = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        for s in SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        return False
