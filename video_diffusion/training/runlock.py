"""
One run directory, one writer. A training holds an exclusive lock on ``<run_dir>/.lock``
for its whole life, so a second training started into the same run (an array job with a
mistyped index, a requeue overlapping the old job's last minutes, a command run twice)
stops at once, before it touches any file, instead of writing its checkpoints over the
first one's.

The lock is a POSIX record lock (``lockf``) on an open file: the operating system releases
it when the process ends, however it ends (``kill -9`` included), so a stale lock never
needs a hand to remove it. Unlike ``flock`` it is not inherited by forked data-loader
workers (which could outlive a killed trainer for a while), and it works on NFS. The holder writes its host and process id into the lock file, which is how a refused
training names it. Rank 0 takes the lock; every rank learns the outcome through one
collective before any work, so all ranks stop together. Sampling and evaluation take no
lock: they only read checkpoints, which appear atomically.
"""

import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Optional

from .. import distributed
from ..distributed import DistContext

LOCK_NAME = ".lock"


class RunLocked(RuntimeError):
    """Another process holds the run directory's lock."""


class RunLock:
    """The lock of one run directory, held from ``acquire`` until ``release`` or the process's end."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """
        Take the lock (creating the run directory if needed) and write this process's
        host and pid into it.

        :raises RunLocked: naming the run directory and the holder, if another process holds it.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLocked(f"run directory {self.run_dir} is in use by another training ({holder(self.path)}); "
                            "wait for it to end, stop it, or give another --log_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing it releases the lock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def holder(path) -> str:
    """Who holds the lock at ``path``, as its holder wrote it ('host H pid P')."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        text = ""
    return text or "holder not yet written"


def lock_run_dir(run_dir, ctx: DistContext) -> RunLock:
    """
    Rank 0 takes the run directory's lock; every rank calls this and learns the outcome
    from one collective, so either all ranks go on or all raise ``RunLocked``.
    """
    lock = RunLock(run_dir)
    error = None
    if ctx.is_main:
        try:
            lock.acquire()
        except (RunLocked, OSError) as e:
            error = str(e) if isinstance(e, RunLocked) else f"cannot lock run directory {run_dir}: {e}"
    error = distributed.all_gather_object(ctx, error)[0]
    if error is not None:
        raise RunLocked(error)
    return lock
