"""Activation memory: the norm -> FiLM -> SiLU chains keep only their input, attention runs a fused
kernel in any layout, and the count of what a training step keeps (training/profiling.py) is right."""

import pytest
import torch

from video_diffusion.build import create_model
from video_diffusion.config import Config, apply_overrides
from video_diffusion.models import blocks, unet
from video_diffusion.models.blocks import AttentionBlock
from video_diffusion.models.nn import _norm_act, norm_act, normalization
from video_diffusion.training.profiling import activation_bytes_per_video, saved_activation_bytes

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)
FP32 = dict(device_type="cpu", dtype=torch.bfloat16, enabled=False)


def saved_storages(fn, *args):
    """The storages autograd keeps from ``fn(*args)``, and its output."""
    kept = []

    def pack(t):
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return {t.untyped_storage().data_ptr() for t in kept}, out


@pytest.mark.parametrize("norm", ["group", "channel"])
@pytest.mark.parametrize("autocast", [FP32, BF16], ids=["fp32", "bf16"])
def test_norm_act_keeps_only_its_inputs_in_bf16_and_equals_the_op_by_op_chain(norm, autocast):
    torch.manual_seed(0)
    layer = normalization(16, norm)
    torch.nn.init.normal_(layer.weight)
    torch.nn.init.normal_(layer.bias)
    dtype = torch.bfloat16 if autocast.get("enabled", True) else torch.float32
    x = torch.randn(2, 16, 3, 4, 4).to(dtype).requires_grad_()
    scale, shift = (torch.randn(2, 16, 1, 1, 1).to(dtype).requires_grad_() for _ in range(2))
    grads = []
    for fn in (norm_act, _norm_act):
        with torch.autocast(**autocast):
            kept, out = saved_storages(lambda: fn(layer, x, scale, shift, True))
        inputs = {t.untyped_storage().data_ptr() for t in (x, scale, shift, layer.weight, layer.bias)}
        if fn is norm_act and dtype == torch.bfloat16:  # what backward keeps: the inputs, nothing computed
            assert kept <= inputs and x.untyped_storage().data_ptr() in kept
        elif fn is norm_act:  # float32: run op by op, no recomputation to pay for
            assert not kept <= inputs
        grads.append(torch.autograd.grad(out.float().square().sum(), (x, scale, shift, layer.weight, layer.bias)))
        grads[-1] = (out,) + grads[-1]
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def bair_shaped(**overrides):
    """A small model with bair64's structure: 4 levels, 2 res blocks, factorised attention at 16 and 8."""
    fields = dict(image_size=32, seq_len=6, num_channels=16, num_res_blocks=2, channel_mult="1,2,3,4",
                  attention_resolutions="8,4", num_heads=4, diffusion_steps=100, rgb=True)
    fields.update(overrides)
    return create_model(apply_overrides(Config(), fields)).train()


def test_a_bf16_step_keeps_no_float32_activations_and_about_half_the_bytes_of_the_op_by_op_chains(monkeypatch):
    model = bair_shaped()
    lean = activation_bytes_per_video(model, (3, 32, 32), 6, BF16)
    float32 = sum(v for k, v in lean.items() if "float32" in k)
    assert float32 < 0.01 * sum(lean.values()), lean  # statistics only
    # the same network with each chain run op by op (norm in float32, FiLM, SiLU each keeping its input)
    for module in (blocks, unet):
        monkeypatch.setattr(module, "norm_act", lambda norm, x, scale=None, shift=None, act=True:
                            _norm_act(norm, x, scale, shift, act))
    op_by_op = activation_bytes_per_video(model, (3, 32, 32), 6, BF16)
    assert sum(lean.values()) < 0.55 * sum(op_by_op.values())  # 0.50 here; bair64 itself: 0.50


@pytest.mark.parametrize("axes", ["space", "time", "spacetime"])
def test_attention_keeps_no_score_matrix_in_either_layout_and_batch(axes):
    torch.manual_seed(0)
    block = AttentionBlock(16, axes, num_heads=2).train()
    tokens = {"space": 16, "time": 3, "spacetime": 48}[axes]
    for batch in (1, 2):
        for layout in (torch.contiguous_format, torch.channels_last_3d):
            x = torch.randn(batch, 16, 3, 4, 4).contiguous(memory_format=layout).requires_grad_()
            kept = []
            with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
                block(x)
            assert not [t.shape for t in kept if t.dim() >= 3 and t.shape[-2:] == (tokens, tokens)]


def test_the_fake_count_equals_the_real_one():
    model = bair_shaped(num_channels=8, seq_len=3)
    with torch.no_grad():  # give the zeroed output layers weights, so nothing is special-cased
        for p in model.parameters():
            p.normal_(0, 0.1)
    fake = saved_activation_bytes(model, (3, 32, 32), 3, 2, FP32, fake=True)
    real = saved_activation_bytes(model, (3, 32, 32), 3, 2, FP32, fake=False)
    assert fake == real and sum(real.values()) > 1e6
