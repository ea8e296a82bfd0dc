"""scripts/device_check.py: --smoke runs every step on a CPU too, so it cannot rot; and it cannot lie."""

import json
import runpy
import subprocess
import sys

import pytest
import torch

from conftest import CPU, REPO, script_env

CHECK = REPO / "scripts" / "device_check.py"


@pytest.mark.slow
def test_device_check_smoke_writes_its_figures_and_pictures(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(CHECK), "--smoke", "--out_dir", str(out)],
                          env=script_env(), capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "device_check.json").read_text())
    assert report["failures"] == {}
    assert report["environment"]["torch"]
    # without a GPU every CUDA test skips with its reason (and none fails)
    if not report["environment"]["gpu"]:
        assert report["cuda_tests"].get("skipped", 0) >= 5 and not report["cuda_tests"].get("failed")
        assert "needs a CUDA GPU" in (out / "cuda_tests.txt").read_text()
    bench = report["benchmark"]
    assert bench["videos_per_s"] > 0 and bench["sample_s_per_video"] > 0 and bench["batch_size"] == 2
    assert bench["profile"]["top_ops"] and bench["profile"]["activation_mb_per_video"]  # where time and memory go
    q = report["quality"]["variants"]["plain"]
    assert q["steps"] == 3 and q["dataset"] == "digits" and set(q["tasks"]) == {"pred2", "infill"}
    for row in q["tasks"].values():
        assert {"model", "copy_last_given", "black", "object_tracker", "perfect"} <= set(row)
    assert len(q["temporal_use"]["gap"]) == 3 and q["generation"]["fvd"] > 0
    assert isinstance(q["motion_use"]["model"], float) and q["motion_use"]["perfect"] > 0
    assert (out / "quality_grid.png").stat().st_size > 1000 and (out / "generation_grid.png").stat().st_size > 1000
    assert len(list(out.iterdir())) <= 8
    # the summary table comes last
    tail = proc.stdout.strip().splitlines()
    assert tail[0].startswith("device:") and any(line.startswith("quality runs") for line in tail[-12:])
    assert "temporal use" in tail[-1] and "motion use" in tail[-1]


def test_out_of_memory_at_every_batch_is_a_named_failure(tmp_path, monkeypatch):
    check = runpy.run_path(str(CHECK))
    message = "error: out of memory at every batch tried (16): out of memory: CUDA out of memory. Tried to allocate 9 GiB"
    monkeypatch.setitem(check["benchmark"].__globals__, "run", lambda cmd, log, timeout, env=None: (1, message))
    with pytest.raises(RuntimeError, match=r"out of memory at every batch tried \(16\)"):
        check["benchmark"](tmp_path, False, False, 16, 256, 989.0, 60)
    # and a report with it fails: the step is named with its reason, and the exit status is 1
    report = {"environment": {"gpu": "H200", "gpu_memory_gb": 139, "torch": "2.11", "cuda": "13.0", "bf16": True,
                              "peak_bf16_tflops": 989.0, "date": "2026-12-04"},
              "failures": {"benchmark": f"RuntimeError: {message}"}}
    assert "FAILED benchmark: RuntimeError: error: out of memory at every batch tried (16)" in check["summary"](report)


def test_the_batch_probe_finds_the_largest_batch_that_fits(tmp_path, monkeypatch):
    from conftest import micro_config

    bench = runpy.run_path(str(REPO / "scripts" / "benchmark.py"))
    build = bench["build"]

    def build_with_a_memory_limit(cfg, ctx):  # a device where more than 8 videos do not fit
        loop, batch = build(cfg, ctx)
        real = loop.run_step

        def step(b):
            if b["video"].shape[0] > 8:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(b)

        loop.run_step = step
        return loop, batch

    monkeypatch.setitem(bench["probe_batch"].__globals__, "build", build_with_a_memory_limit)
    cfg = micro_config(tmp_path, batch_size=2)
    fits, rows = bench["probe_batch"](cfg, CPU, 64)
    assert fits.train.batch_size == 8
    assert [(r["batch_size"], r["fits"]) for r in rows] == [(2, True), (4, True), (8, True), (16, False)]
    assert "out of memory" in rows[-1]["error"]
    none, rows = bench["probe_batch"](micro_config(tmp_path, batch_size=16), CPU, 64)
    assert none is None and rows == [dict(rows[0], fits=False)] and not rows[0]["fits"]


def test_flops_counted_on_one_video_outside_compile_equal_the_whole_batchs(tmp_path):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from video_diffusion.config import PRESETS, Config, apply_overrides

    bench = runpy.run_path(str(REPO / "scripts" / "benchmark.py"))
    cfg = apply_overrides(Config(), {**PRESETS["tiny"], "batch_size": 4, "num_workers": 0,
                                     "log_dir": str(tmp_path / "run"), "sample_interval": 0})
    loop, batch = bench["build"](cfg, CPU)
    x = batch["video"]
    t = torch.full((4,), 500, dtype=torch.long)
    mask = torch.zeros(4, 8)
    mask[:, 0] = 1
    # the whole batch, counted directly (attention through the math kernel, which the counter sees)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loop.diffusion.training_losses(loop.model, x, t, obs_mask=mask)["loss"].mean().backward()
    loop.opt.zero_grad()
    # under any attention backend (CPU's flash kernel, which the counter cannot see, is the default here)
    assert bench["count_flops"](loop, batch) == counter.get_total_flops() > 1e10
