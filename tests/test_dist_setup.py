"""Where ranks meet: MASTER_ADDR/PORT in every mode, no loopback address across hosts, srun without PMI."""

import json
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from conftest import REPO, VENV_BIN, micro_config, script_env
from video_diffusion.distributed import _tasks_on_node, host_address, launch_from_env

MPIEXEC = shutil.which("mpiexec", path=str(VENV_BIN)) or shutil.which("mpiexec")


def test_a_loopback_host_address_is_never_offered_to_other_hosts():
    loop = lambda: "127.0.1.1"  # noqa: E731  (Debian's /etc/hosts entry for the host name)
    assert host_address(False, resolve=loop) == "127.0.1.1"  # one host: fine
    assert host_address(True, resolve=loop, outward=lambda: "10.1.2.3") == "10.1.2.3"
    with pytest.raises(RuntimeError, match="set MASTER_ADDR"):
        host_address(True, resolve=loop, outward=lambda: "127.0.0.1")
    assert host_address(True, resolve=lambda: "10.9.9.9", outward=lambda: "10.1.2.3") == "10.9.9.9"


SRUN = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_NODEID": "1", "SLURM_JOB_ID": "123456"}


def test_srun_without_pmi_is_one_distributed_run():
    with pytest.raises(RuntimeError, match="MASTER_ADDR is not set.*scontrol show hostnames"):
        launch_from_env(SRUN)
    got = launch_from_env({**SRUN, "MASTER_ADDR": "node01"})
    assert got == dict(launcher="slurm", rank=5, world=8, local_rank=1, local_world=4, addr="node01",
                       port=20000 + 123456 % 20000)
    assert launch_from_env({**SRUN, "MASTER_ADDR": "node01", "MASTER_PORT": "29400"})["port"] == 29400
    # the batch script itself (no job step) and a one-task step are single processes
    assert launch_from_env({k: v for k, v in SRUN.items() if k != "SLURM_STEP_ID"}) is None
    assert launch_from_env({**SRUN, "SLURM_STEP_NUM_TASKS": "1", "MASTER_ADDR": "x"}) is None
    # srun --mpi=pmi2 (PMI variables set) goes through MPI
    assert launch_from_env({**SRUN, "PMI_RANK": "5", "MASTER_ADDR": "x"}) is None
    assert _tasks_on_node("4(x2),3", 2) == 3 and _tasks_on_node("2", 0) == 2


def test_torchrun_environment():
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "29501", "LOCAL_RANK": "1",
           "LOCAL_WORLD_SIZE": "2"}
    assert launch_from_env(env) == dict(launcher="torchrun", rank=1, world=2, local_rank=1, local_world=2,
                                        addr="h", port=29501)


def run_ranks(tmp_path, envs, launcher=()):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = micro_config(tmp_path, batch_size=1, max_steps=1, log_interval=1, save_interval=1)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    cmd = [*launcher, sys.executable, str(REPO / "tests" / "dist_worker.py"), str(cfg_file), str(out)]
    procs = [subprocess.Popen(cmd, env={**script_env(), **e}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for e in envs]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    results = [(rc, out, err) for out, err, rc in results]
    return results, out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_srun_tasks_without_pmi_train_together(tmp_path):
    port = str(free_port())
    envs = [{**SRUN, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r), "SLURM_STEP_NUM_TASKS": "2",
             "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_NODEID": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
            for r in range(2)]
    results, out = run_ranks(tmp_path, envs)
    assert all(rc == 0 for rc, _, _ in results), results
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    assert [r["launcher"] for r in ranks] == ["slurm", "slurm"] and ranks[0]["world_size"] == 2
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["params"], ranks[1]["params"]))


@pytest.mark.slow
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not installed (pip install mpich mpi4py)")
def test_mpi_honours_master_addr(tmp_path):
    # an address that cannot resolve: the run must fail on it, proving it was used
    results, _ = run_ranks(tmp_path, [{"MASTER_ADDR": "no-such-host.invalid", "MASTER_PORT": "29999"}],
                           launcher=(MPIEXEC, "-n", "2"))
    rc, out, err = results[0]
    assert rc != 0 and "no-such-host.invalid" in out + err
    ok, _ = run_ranks(tmp_path / "b", [{"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}],
                      launcher=(MPIEXEC, "-n", "2"))
    assert ok[0][0] == 0, ok


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not installed (pip install mpich mpi4py)")
def test_a_distributed_run_finishes_with_its_status_after_the_exit_hooks(tmp_path):
    # finish() ends a DDP process without the interpreter's teardown (gloo's threads outlive
    # the group); what a normal exit does must still happen: exit hooks, flushed output, status
    script = tmp_path / "end.py"
    script.write_text(
        "import atexit, sys, torch\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from video_diffusion import distributed\n"
        "ctx = distributed.setup_dist('cpu')\n"
        "ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))\n"
        "ddp(torch.ones(2, 3)).sum().backward()\n"
        f"atexit.register(lambda: open({str(tmp_path)!r} + f'/hook{{ctx.rank}}', 'w').write('ran'))\n"
        "sys.stdout.write(f'rank {ctx.rank} done')  # no newline: only a flush writes it\n"
        "distributed.finish(ctx, int(sys.argv[1]))\n"
        "raise SystemExit('finish() returned')\n")
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), "75"], env=script_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 75, proc.stdout + proc.stderr
    assert "rank 0 done" in proc.stdout and "rank 1 done" in proc.stdout
    assert "returned" not in proc.stderr and "terminate" not in proc.stderr
    assert (tmp_path / "hook0").read_text() == "ran" and (tmp_path / "hook1").read_text() == "ran"
    # on one process it returns (status 0) or exits with the status, as sys.exit does
    from video_diffusion.distributed import DistContext, finish

    single = DistContext(0, 1, 0, 1, torch.device("cpu"), "single")
    assert finish(single, 0) is None
    with pytest.raises(SystemExit) as stop:
        finish(single, 3)
    assert stop.value.code == 3
