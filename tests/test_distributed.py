"""Multi-process training on the CPU with gloo: mpiexec (mpi4py) and torchrun."""

import csv
import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, VENV_BIN, micro_config, script_env

MPIEXEC = shutil.which("mpiexec", path=str(VENV_BIN)) or shutil.which("mpiexec")


def run_worker(tmp_path, name, launcher, batch_size):
    cfg = micro_config(tmp_path / name, batch_size=batch_size, max_steps=3, log_interval=3, save_interval=3,
                       schedule_sampler="loss-second-moment")
    cfg_file = tmp_path / f"{name}.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    out = tmp_path / f"{name}_out"
    out.mkdir()
    cmd = launcher + [str(REPO / "tests" / "dist_worker.py"), str(cfg_file), str(out)]
    proc = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [torch.load(p) for p in sorted(out.glob("rank*.pt"))]
    with open(tmp_path / name / "run" / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    return ranks, rows


@pytest.mark.slow
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not installed (pip install mpich mpi4py)")
def test_mpiexec_two_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    two, rows2 = run_worker(tmp_path, "two", [MPIEXEC, "-n", "2", sys.executable], batch_size=2)
    one, rows1 = run_worker(tmp_path, "one", [sys.executable], batch_size=4)
    assert [r["world_size"] for r in two] == [2, 2] and two[0]["launcher"] == "mpi"
    assert one[0]["world_size"] == 1
    # DDP keeps the replicas bit-identical
    for a, b in zip(two[0]["params"], two[1]["params"]):
        assert torch.equal(a, b)
    # ...and equal the single-process run on the same global batch. The gradient is summed
    # in another order, and Adam turns rounding noise on near-zero gradients into
    # lr-sized steps on a few weights, so compare the whole update: the runs must agree to
    # 1% of its size (a different global batch differs by ~100%).
    update_one = torch.cat([(b - a).flatten() for a, b in zip(one[0]["init"], one[0]["params"])])
    update_two = torch.cat([(b - a).flatten() for a, b in zip(two[0]["init"], two[0]["params"])])
    assert all(torch.equal(a, b) for a, b in zip(one[0]["init"], two[0]["init"]))
    assert update_one.abs().mean() > 1e-4
    assert (update_two - update_one).abs().mean() < 0.01 * update_one.abs().mean()
    assert (update_two - update_one).abs().max() < 0.1 * update_one.abs().max()
    # logged losses are reduced over both ranks: the same numbers as the one-process run
    assert rows2[-1]["samples"] == rows1[-1]["samples"] == "12"
    for key in ("loss", "mse", "grad_norm"):
        assert float(rows2[-1][key]) == pytest.approx(float(rows1[-1][key]), rel=1e-4)


@pytest.mark.slow
def test_torchrun_two_ranks(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two, _ = run_worker(tmp_path, "tr", launcher, batch_size=1)
    assert [r["launcher"] for r in two] == ["torchrun", "torchrun"]
    for a, b in zip(two[0]["params"], two[1]["params"]):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not installed (pip install mpich mpi4py)")
def test_train_script_under_mpiexec(tmp_path):
    run = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, str(REPO / "scripts" / "video_train.py"), "--log_dir", str(run),
           "--image_size", "16", "--seq_len", "4", "--num_channels", "8", "--num_res_blocks", "1",
           "--channel_mult", "1,2", "--attention_resolutions", "8", "--num_heads", "2",
           "--max_num_mask_frames", "2", "--diffusion_steps", "100", "--batch_size", "1", "--max_steps", "2",
           "--log_interval", "1", "--num_workers", "0"]
    proc = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (run / "ckpt_0000002.pt").is_file()
    assert "on 2 rank(s)" in (run / "log.txt").read_text()
    # rank 0 alone writes: one header, one row per logged step
    assert len((run / "progress.csv").read_text().splitlines()) == 3


@pytest.mark.slow
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not installed (pip install mpich mpi4py)")
@pytest.mark.parametrize("preset, shrink", [("tiny", []), ("small", []),
                                            # bair64's network at a fraction of its width and window
                                            ("bair64", ["--num_channels", "16", "--seq_len", "6"])])
def test_every_preset_trains_on_two_ranks(tmp_path, preset, shrink):
    # DDP fails a step when a parameter gets no gradient: every parameter of each preset's network is used
    run = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, str(REPO / "scripts" / "video_train.py"), "--preset", preset,
           *shrink, "--log_dir", str(run), "--batch_size", "1", "--max_steps", "2", "--log_interval", "1",
           "--sample_interval", "0", "--num_workers", "0", "--save_interval", "2"]
    proc = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (run / "ckpt_0000002.pt").is_file() and "on 2 rank(s)" in (run / "log.txt").read_text()
