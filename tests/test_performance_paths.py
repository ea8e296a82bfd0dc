"""The optimised paths (channels_last_3d, bf16 autocast, torch.compile) against the plain fp32 path,
and the benchmark script's smoke mode."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, script_env, micro_config
from conftest import X_KNOWN, gens
from conftest import CPU, fixed_batches, flat_params
from video_diffusion.build import create_diffusion, create_model
from video_diffusion.training.logger import RunLogger
from video_diffusion.diffusion.masks import prediction_mask
from video_diffusion.sampling.generate import sample
from video_diffusion.training.loop import TrainLoop


def two_steps(tmp_path, **overrides):
    cfg = micro_config(tmp_path, **overrides)
    videos = fixed_batches(cfg, 2)
    torch.manual_seed(0)
    loop = TrainLoop(cfg, CPU, create_model(cfg), create_diffusion(cfg), lambda s: iter([{"video": videos}] * 2),
                     RunLogger(cfg.train.log_dir, echo=False))
    losses = []
    for _ in range(2):
        loop.run_step(next(loop.data))
        losses.append(loop.window.sums[0].item())
    return losses, flat_params(loop.model), loop


def assert_same_updates(params_a, params_b):
    """
    Adam turns float noise on near-zero gradients into lr-sized steps on a few weights, so
    compare the whole update from the initial weights: agreement to 1% of its mean size.
    """
    torch.manual_seed(0)
    init = flat_params(create_model(micro_config()))
    update_a, update_b = params_a - init, params_b - init
    assert update_a.abs().mean() > 1e-4
    assert (update_a - update_b).abs().mean() < 0.01 * update_a.abs().mean()
    assert (update_a - update_b).abs().max() < 0.2 * update_a.abs().max()


def test_channels_last_matches_the_plain_layout(tmp_path):
    plain_loss, plain_params, plain = two_steps(tmp_path / "a", channels_last=False)
    cl_loss, cl_params, cl = two_steps(tmp_path / "b", channels_last=True)
    assert cl.model.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not plain.model.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert cl_loss == pytest.approx(plain_loss, rel=1e-5)
    assert_same_updates(plain_params, cl_params)
    # and sampling with the trained weights in either layout
    cfg = micro_config(timestep_respacing="ddim5")
    d = create_diffusion(cfg)
    mask = prediction_mask(3, 4, 1)
    outs = [sample(d, loop.model.eval(), X_KNOWN.shape, gens(3), obs_mask=mask, x_known=X_KNOWN, sampler="ddim")
            for loop in (plain, cl)]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)


def test_bf16_autocast_stays_close_to_fp32(tmp_path):
    fp32_loss, fp32_params, _ = two_steps(tmp_path / "a", precision="fp32")
    bf16_loss, bf16_params, _ = two_steps(tmp_path / "b", precision="bf16")
    # bf16 keeps 8 mantissa bits: the loss agrees to about 1%
    assert bf16_loss == pytest.approx(fp32_loss, rel=2e-2)
    assert torch.isfinite(bf16_params).all()
    assert (bf16_params - fp32_params).abs().max() < 5e-3  # two Adam steps of lr 1e-3 each


@pytest.mark.slow
def test_compiled_network_matches_eager(tmp_path):
    eager_loss, eager_params, _ = two_steps(tmp_path / "a", compile=False)
    compiled_loss, compiled_params, loop = two_steps(tmp_path / "b", compile=True)
    assert loop.forward_model is not loop.model
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
    assert_same_updates(eager_params, compiled_params)


def test_benchmark_smoke_mode_reports_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--smoke", "--peak_tflops", "0.5",
           "--json", str(out), "--log_dir", str(tmp_path / "run"), "--image_size", "16", "--seq_len", "4",
           "--num_channels", "8", "--num_res_blocks", "1", "--channel_mult", "1,2", "--attention_resolutions", "8",
           "--num_heads", "2", "--max_num_mask_frames", "2", "--diffusion_steps", "100", "--batch_size", "2",
           "--profile"]
    proc = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    for key in ("train_s_per_step", "train_videos_per_s", "train_peak_mem_mb", "sample_s_per_video",
                "flops_per_step", "mfu", "device", "config"):
        assert key in r, key
    assert r["train_s_per_step"] > 0 and r["sample_s_per_video"] > 0 and r["flops_per_step"] > 1e6
    assert r["train_videos_per_s"] * r["train_s_per_step"] == pytest.approx(2)
    assert r["mfu"] == pytest.approx(r["flops_per_step"] / r["train_s_per_step"] / 1e12 / 0.5)
    assert 10 < r["train_peak_mem_mb"] < 24 * 1024
    assert r["config"]["model"]["num_channels"] == 8
    assert "train s/step" in proc.stdout and "MFU" in proc.stdout
    # --profile: activation memory by layer kind, and the operators that took the step's time
    prof = r["profile"]
    assert sum(prof["activation_mb_per_video"].values()) > 0.01 and "ResBlock/Conv3d (float32)" in prof["activation_mb_per_video"]
    assert len(prof["top_ops"]) >= 5 and all(op["self_ms"] > 0 for op in prof["top_ops"])
    assert any("conv" in op["name"] for op in prof["top_ops"])
    assert "top operators by self CPU time" in proc.stdout
