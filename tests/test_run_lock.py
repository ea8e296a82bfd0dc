"""One run directory, one writer: a second training into a held run stops before touching a file."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import MICRO_FLAGS, REPO, VENV_BIN, script_env
from video_diffusion.checkpoints import list_checkpoints, load_checkpoint
from video_diffusion.training.runlock import RunLock, RunLocked

MPIEXEC = shutil.which("mpiexec", path=str(VENV_BIN)) or shutil.which("mpiexec")
HOLD = ("import sys, time; from video_diffusion.training.runlock import RunLock; "
        "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)")


def train(run, *extra, launcher=()):
    return subprocess.run([*launcher, sys.executable, str(REPO / "scripts" / "video_train.py"), *MICRO_FLAGS,
                           "--log_dir", str(run), *extra], env=script_env(), capture_output=True, text=True,
                          timeout=300)


def hold(run):
    """A process of its own that holds the run's lock until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=script_env(), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def snapshot(run):
    return {p.relative_to(run): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.rglob("*")) if p.is_file()}


def test_the_lock_is_exclusive_names_its_holder_and_goes_with_its_process(tmp_path):
    run = tmp_path / "run"
    holder = hold(run)
    try:
        with pytest.raises(RunLocked, match=f"run directory {run} is in use by another training "
                                            rf"\(host \S+ pid {holder.pid}\)"):
            RunLock(run).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(run)  # the operating system released it with the process: no stale lock
    lock.acquire()
    assert f"pid {os.getpid()}" in (run / ".lock").read_text()
    lock.release()


@pytest.mark.slow
def test_a_second_training_is_refused_untouched_and_kill_9_frees_the_run(tmp_path):
    run = tmp_path / "run"
    first = train(run, "--max_steps", "2", "--save_interval", "2")
    assert first.returncode == 0, first.stderr
    holder = hold(run)
    try:
        before = snapshot(run)
        second = train(run, "--max_steps", "4", "--save_interval", "2")
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: run directory {run} is in use by another training ({(run / '.lock').read_text().strip()}); "
            "wait for it to end, stop it, or give another --log_dir")
        assert f"pid {holder.pid}" in second.stderr
        assert snapshot(run) == before  # every file of the first run, byte for byte and untouched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # a real training killed with -9 while it holds the run: the next one takes over and resumes
    trainer = subprocess.Popen([sys.executable, str(REPO / "scripts" / "video_train.py"), *MICRO_FLAGS,
                                "--log_dir", str(run), "--max_steps", "100000", "--save_interval", "1"],
                               env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and max((load_checkpoint(p)["step"] for p in list_checkpoints(run)[-1:]),
                                         default=0) < 4:
        time.sleep(0.2)
    assert f"pid {trainer.pid}" in (run / ".lock").read_text()
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    reached = load_checkpoint(list_checkpoints(run)[-1])["step"]
    after = train(run, "--max_steps", str(reached + 2), "--save_interval", "1")
    assert after.returncode == 0, after.stderr
    assert f"resumed from" in (run / "log.txt").read_text()
    assert load_checkpoint(list_checkpoints(run)[-1])["step"] == reached + 2


@pytest.mark.slow
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not installed (pip install mpich mpi4py)")
def test_two_ranks_share_one_lock_and_are_refused_together(tmp_path):
    run = tmp_path / "run"
    # two ranks of one training: rank 0 holds the lock for both
    both = train(run, "--batch_size", "1", "--max_steps", "2", launcher=(MPIEXEC, "-n", "2"))
    assert both.returncode == 0, both.stdout + both.stderr
    assert (run / "ckpt_0000002.pt").is_file()
    holder = hold(run)
    try:
        before = snapshot(run)
        refused = train(run, "--batch_size", "1", "--max_steps", "4", launcher=(MPIEXEC, "-n", "2"))
        assert refused.returncode != 0 and f"pid {holder.pid}" in refused.stderr
        assert refused.stderr.count("is in use by another training") == 2  # each rank says why it stops
        assert snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


@pytest.mark.slow
def test_a_refused_data_dir_leaves_no_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = train(tmp_path / "run", "--data_dir", str(tmp_path / "empty"), "--max_steps", "1")
    assert proc.returncode == 2 and "empty" in proc.stderr
    assert not (tmp_path / "run").exists()
