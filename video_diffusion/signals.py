"""
The stop signals a run answers (SIGTERM from SLURM, Kubernetes or ``kill``; SIGINT, Ctrl-C;
SIGUSR1, SLURM's warning before the time limit), and what the data loader's worker processes
do with them. The training loop's handling of them is ``training.preemption``; this module sits
below both the data and the training packages so that neither imports the other for it.
"""

import atexit
import functools
import multiprocessing
import signal

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """
    DataLoader ``worker_init_fn``: workers leave the stop signals to the main process, which
    needs them alive to finish its step (a terminal's Ctrl-C, and SLURM's signals, reach every
    process). The workers exit when the loader is shut down, or with the main process, which
    then kills the ones still running (``kill_workers_at_exit``).
    """
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def _kill_daemonic_children() -> None:
    # torch's SIGCHLD hook would report the killed workers as failures: the process is exiting
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


@functools.lru_cache(maxsize=None)
def kill_workers_at_exit() -> None:
    """
    Register (once) an exit hook that kills daemonic worker processes still running. At exit
    multiprocessing stops such children with SIGTERM and waits for them, which a worker that
    ignores SIGTERM would never answer; this hook runs first (atexit runs hooks in reverse order
    of registration, and multiprocessing registers its own on import).
    """
    atexit.register(_kill_daemonic_children)
