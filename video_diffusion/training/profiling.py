"""
Where a training step's activation memory goes: the tensors autograd keeps for the backward
pass, counted by the kind of layer that keeps them.

The count runs the network's forward pass on fake tensors (shapes, dtypes and devices without
data, ``torch._subclasses.FakeTensorMode``), so it takes seconds for any configuration on any
machine, bf16 autocast on a CPU included, where the real step would take an hour. It counts each
storage once (a view and its base are one tensor), under the outermost block and innermost layer
that was running when autograd saved it. It is a count, not a measurement: the peak
``benchmark.py`` measures adds the backward pass's transient gradients and the allocator's slack.
"""

import contextlib
from collections import Counter
from typing import Dict

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

_CONTAINERS = ("Sequential", "TimestepSequential", "ModuleList", "UNet3D")


def saved_activation_bytes(model: torch.nn.Module, image_shape, seq_len: int, batch_size: int,
                           autocast: dict, fake: bool = True) -> Dict[str, int]:
    """
    Bytes autograd keeps from one forward pass of ``model`` on ``batch_size`` videos, by
    "block/layer (dtype)", where block is the outermost non-container module running and layer
    the innermost ("(network)" when none: the UNet's own code).

    :param model: a UNet3D in training mode; its parameters are not changed.
    :param image_shape: (channels, height, width) of a frame.
    :param seq_len: frames per video.
    :param batch_size: videos in the batch.
    :param autocast: keyword arguments of ``torch.autocast`` (device_type, dtype, enabled).
    :param fake: run on fake tensors (no data, no compute); False runs the real forward pass.
    """
    stack, hooks = [], []

    def enter(module, args):
        stack.append(type(module).__name__)

    def leave(module, args, out):
        stack.pop()

    for m in model.modules():
        if type(m).__name__ not in _CONTAINERS:
            hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    seen, kept, alive = set(), Counter(), []

    def pack(t):
        storage = t.untyped_storage()
        alive.append(t)  # held until the count ends, so no storage address is reused meanwhile
        if storage._cdata not in seen:
            seen.add(storage._cdata)
            where = f"{stack[0]}/{stack[-1]}" if stack else "(network)"
            kept[f"{where} ({str(t.dtype).replace('torch.', '')})"] += storage.nbytes()
        return t

    device = next(model.parameters()).device
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext():
            x = torch.randn(batch_size, image_shape[0], seq_len, image_shape[1], image_shape[2], device=device)
            t = torch.full((batch_size,), 500, dtype=torch.long, device=device)
            mask = torch.zeros(batch_size, seq_len, device=device)
            mask[:, 0] = 1
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast(**autocast):
                model(x, t, obs_mask=mask if getattr(model, "mask_input", False) else None)
    finally:
        for h in hooks:
            h.remove()
    return dict(kept)


def activation_bytes_per_video(model, image_shape, seq_len: int, autocast: dict, fake: bool = True) -> Dict[str, int]:
    """The growth of ``saved_activation_bytes`` from two videos to four, halved: what one more video
    keeps (the weights' low-precision copies, kept once per step, drop out). Not from one video to
    two: at batch 1 scaled-dot-product attention may choose another kernel than at larger batches
    (before q, k, v were made contiguous it fell back to the math kernel and kept its float32 score
    matrices only there), which would make the growth say nothing about real batches."""
    two = saved_activation_bytes(model, image_shape, seq_len, 2, autocast, fake)
    four = saved_activation_bytes(model, image_shape, seq_len, 4, autocast, fake)
    per = {k: (four.get(k, 0) - two.get(k, 0)) // 2 for k in set(two) | set(four)}
    return {k: v for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v}
