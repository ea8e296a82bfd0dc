"""Small building blocks shared by the network: embeddings, normalisation, init helpers."""

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 so that bf16 autocast does not lose the statistics."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class ChannelNorm(nn.Module):
    """
    Normalisation over the channels at each position (LayerNorm of every pixel's feature
    vector, as ConvNeXt and DiT normalise tokens), in float32.

    Why it exists: GroupNorm standardises each group over the whole video, so a feature
    linear in the pixels of a one-coloured digit on black comes out the same whatever the
    digit's colour or brightness (only its sign survives), and the network cannot carry a
    given digit's colour at all. Normalising across channels at each pixel keeps the
    direction of the feature vector, where the colour is.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        h = x.float()
        mean = h.mean(dim=1, keepdim=True)
        var = h.var(dim=1, keepdim=True, unbiased=False)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        h = (h - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)
        return h.type(x.dtype)


NORMS = ("group", "channel")


def normalization(channels: int, norm: str = "group") -> nn.Module:
    """
    ``"group"``: GroupNorm with 32 groups, or fewer when ``channels`` is small (tiny test
    models); ``"channel"``: ``ChannelNorm``.
    """
    if norm == "channel":
        return ChannelNorm(channels)
    if norm != "group":
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    groups = math.gcd(32, channels)
    return GroupNorm32(groups, channels)


def _norm_act(norm: nn.Module, x: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
              act: bool) -> torch.Tensor:
    h = norm(x)
    if scale is not None:
        h = h * (1 + scale) + shift
    return F.silu(h) if act else h


def norm_act(norm: nn.Module, x: torch.Tensor, scale: Optional[torch.Tensor] = None,
             shift: Optional[torch.Tensor] = None, act: bool = True) -> torch.Tensor:
    """
    ``norm(x)``, then ``* (1 + scale) + shift`` when a scale is given (FiLM), then SiLU when ``act``,
    keeping only ``x`` (and the small scale and shift) for the backward pass.

    Why: run op by op, the chain keeps float32 statistics input (the norms compute in float32),
    the modulated tensor and SiLU's input for backward: under bf16 autocast 10 bytes per element of
    ``x`` on top of the 2 of the result the next convolution keeps, over half of a bair64 training
    step's activation memory (docs/performance.md). The chain is element-wise and cheap, so during
    backward it is recomputed from ``x``, which the caller keeps anyway (it is the residual stream or
    a convolution's output). In float32 there are no wider copies to save and the recomputation
    would cost about 10% of a CPU step (`tiny`), so there, and outside training, it runs directly.

    :param norm: a ``normalization`` module.
    :param x: [N, C, ...] activations.
    :param scale: [N, C, 1, ...] or None.
    :param shift: as ``scale``; given together with it.
    :param act: apply SiLU last.
    """
    if (torch.is_grad_enabled() and _low_precision(x)
            and (x.requires_grad or any(p.requires_grad for p in norm.parameters()))):
        # no randomness inside, so no RNG state to stash and restore
        return checkpoint(_norm_act, norm, x, scale, shift, act, use_reentrant=False, preserve_rng_state=False)
    return _norm_act(norm, x, scale, shift, act)


def _low_precision(x: torch.Tensor) -> bool:
    """Whether ``x`` is, or autocast will compute on it in, a 16-bit float type."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return True
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4: one function per device type
        if x.device.type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return x.device.type == "cuda" and torch.is_autocast_enabled()


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters so that a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """
    Sinusoidal embedding of (possibly fractional) timesteps.

    :param timesteps: a 1-D tensor of N timesteps, one per batch element.
    :param dim: the embedding width.
    :param max_period: the longest period of the sinusoids.
    :return: an [N, dim] float tensor.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def to_channels_last(model: nn.Module) -> nn.Module:
    """
    Put the 3D convolution weights in ``channels_last_3d`` (faster kernels on CPU and GPU).

    A 1x1x1 kernel has the same memory order in both layouts but different strides, and
    autograd hands back its gradient in the contiguous strides; under DDP that mismatch
    with the bucket views ("Grad strides do not match bucket view strides") costs a copy
    per step. Those weights are left contiguous, so every gradient matches its parameter.
    """
    model = model.to(memory_format=torch.channels_last_3d)
    for p in model.parameters():
        if p.ndim == 5 and tuple(p.shape[2:]) == (1, 1, 1):
            # .contiguous() would keep the strides (size-1 dims make it count as contiguous already)
            p.data = torch.empty(p.shape, dtype=p.dtype, device=p.device).copy_(p.data)
    return model
