"""Stop signals: every rank stops after the same step, saves, exits 75, and a relaunch continues."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import MICRO, REPO, VENV_BIN, script_env
from video_diffusion.checkpoints import list_checkpoints, load_checkpoint
from video_diffusion.training.preemption import EXIT_PREEMPTED

MPIEXEC = shutil.which("mpiexec", path=str(VENV_BIN)) or shutil.which("mpiexec")
TRAIN = str(REPO / "scripts" / "video_train.py")


def micro_flags(run, **overrides):
    fields = {**MICRO, "max_steps": 100_000, "save_interval": 100_000, "log_interval": 1, **overrides}
    return ["--log_dir", str(run)] + [x for k, v in fields.items() for x in (f"--{k}", str(v))]


def logged_step(run) -> int:
    try:
        with open(run / "progress.csv") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return 0
    return int(rows[-1]["step"]) if rows else 0


def wait_for_step(run, proc, step, timeout=240):
    start = time.time()
    while logged_step(run) < step:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < timeout, "training made no progress"
        time.sleep(0.2)


def rank_pids(run, launcher_pid):
    """The python processes of a run (by its unique run directory), the launcher excepted."""
    out = subprocess.run(["pgrep", "-f", f"video_train.py --log_dir {run} "], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split() if int(p) != launcher_pid)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_stop_signal_saves_the_current_step_and_a_relaunch_continues(tmp_path, sig):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, TRAIN, *micro_flags(run)], env=script_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(run, proc, 3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, out + err
    assert f"stopped by {signal.Signals(sig).name}" in err and "Traceback" not in err
    ckpts = list_checkpoints(run)
    assert len(ckpts) == 1  # no scheduled save was due: this is the preemption's checkpoint
    stopped_at = load_checkpoint(ckpts[0])["step"]
    assert stopped_at >= 3 and stopped_at == logged_step(run)  # nothing trained after it was lost

    relaunch = subprocess.run([sys.executable, TRAIN, "--log_dir", str(run), "--max_steps", str(stopped_at + 2)],
                              env=script_env(), capture_output=True, text=True, timeout=240)
    assert relaunch.returncode == 0, relaunch.stdout + relaunch.stderr
    assert f"resumed from {ckpts[0]} at step {stopped_at}" in (run / "log.txt").read_text()
    assert load_checkpoint(list_checkpoints(run)[-1])["step"] == stopped_at + 2


@pytest.mark.slow
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not installed (pip install mpich mpi4py)")
def test_a_signal_to_one_rank_stops_both_at_the_same_step(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, TRAIN, *micro_flags(run, batch_size=1)],
                            env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(run, proc, 3)
    pids = rank_pids(run, proc.pid)
    assert len(pids) == 2, pids
    os.kill(pids[-1], signal.SIGTERM)  # one rank only: the vote must carry it to the other
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, out + err
    assert "Traceback" not in err
    ckpts = list_checkpoints(run)
    assert len(ckpts) == 1
    state = load_checkpoint(ckpts[0])
    assert state["world_size"] == 2 and state["step"] >= 3
    log = (run / "log.txt").read_text()
    assert f"at step {state['step']}; checkpoint saved" in log

    relaunch = subprocess.run([MPIEXEC, "-n", "2", sys.executable, TRAIN, "--log_dir", str(run),
                               "--max_steps", str(state["step"] + 1)],
                              env=script_env(), capture_output=True, text=True, timeout=240)
    assert relaunch.returncode == 0, relaunch.stdout + relaunch.stderr
    assert f"resumed from {ckpts[0]} at step {state['step']}" in (run / "log.txt").read_text()


@pytest.mark.slow
def test_fault_injection_script_short(tmp_path):
    # the full study is 20 interruptions (the README's figures); three keep the script honest here,
    # and one overlapping launch that must be refused while the first trains on
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "fault_injection.py"), "--rounds", "3",
                           "--overlaps", "1", "--max_steps", "40", "--save_interval", "5", "--seed", "3", "--work_dir", str(tmp_path / "w"),
                           "--json", str(tmp_path / "f.json")],
                          env=script_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json

    summary = json.loads((tmp_path / "f.json").read_text())
    assert summary["rounds"] == 3 and summary["final_state_equals_uninterrupted"] and summary["progress_rows_once"]
    assert summary["max_steps_lost_sigterm"] == 0 and summary["max_steps_lost_sigkill"] <= 5
    assert summary["overlaps"] == 1 and summary["overlaps_refused"] == 1


def test_a_process_with_live_workers_that_ignore_stop_signals_still_exits(tmp_path):
    # Workers ignore SIGTERM (the main process needs them to finish its step); at exit
    # multiprocessing stops children with SIGTERM and waits, so without the exit hook that
    # kills them the process would hang here forever.
    script = tmp_path / "keep_loop.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from conftest import micro_config\n"
        "from conftest import loop_for\n"
        f"loop = loop_for(micro_config(None, log_dir={str(tmp_path / 'run')!r}, num_workers=1))\n"
        "loop.run_step(next(loop.data))\n"
        "KEEP = loop  # still referenced at exit, as a failed test's frames would be\n")
    proc = subprocess.run([sys.executable, str(script)], env=script_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
