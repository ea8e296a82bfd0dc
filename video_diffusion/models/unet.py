"""
The improved-diffusion UNet made 3D: frames are a third axis of every convolution,
downsampling halves height and width only, and attention is factorized into a spatial
and a temporal pass (or, optionally, one full space-time pass as RaMViD does).

The network owns nothing but the prediction. It is told which frames are observed
through ``obs_mask`` only when ``mask_input`` is on; with it off it ignores the mask,
which reproduces RaMViD's (unaware) network for comparison.
"""

from typing import Optional, Sequence

import torch
import torch.nn as nn

from .blocks import (ATTENTION_TYPES, CONV_TYPES, Downsample, ResBlock, TimestepSequential, Upsample, attention,
                     GivenCorrelation, KernelHead, conv3d, nearest_given_frames, patchify, unpatchify)
from .nn import NORMS, norm_act, normalization, timestep_embedding, zero_module


class UNet3D(nn.Module):
    """
    :param image_size: height and width of the frames (must be divisible by the total downsampling).
    :param in_channels: channels of a frame (1 or 3).
    :param model_channels: base width of the network.
    :param out_channels: channels of the prediction (2x in_channels when sigma is learned).
    :param num_res_blocks: residual blocks per resolution level.
    :param attention_resolutions: frame sizes (in pixels) at which attention is used.
    :param channel_mult: width multiplier per level; len(channel_mult) - 1 downsamplings.
    :param attention_type: "factorized" (space then time) or "full" (space-time, as RaMViD).
    :param mask_input: if True, the network gets ``obs_mask`` as an extra input channel.
    :param conv_type: "3d" (3x3x3 convolutions in the residual blocks) or "2+1d" (factorised).
    :param given_frame_input: if True, every frame also gets the nearest given frame as
        input channels, and its signed distance in time to it as one more, so the content
        to carry forward (a digit's shape and colour, a robot's arm) is at hand locally
        instead of frames away, with how far it has to travel; needs ``mask_input``.
    :param given_frames: how many nearest given frames ``given_frame_input`` gives (1 or 2).
        With 2 the second nearest comes too (the nearest again where only one is given), so a
        motion between two given frames is visible at every frame's own place, to the first
        convolution, instead of only after features have travelled between frames.
    :param given_correlation: r > 0 also gives every frame a cost volume of its two nearest
        given frames over displacements of up to r cells (``blocks.GivenCorrelation``): how well
        each place of the nearest matches each nearby place of the second, (2r+1)^2 channels, so
        a displacement between them is read off a peak instead of discovered; needs
        ``given_frame_input``. 0 (the default) builds none.
    :param patch_size: p > 1 folds each p x p patch of a frame into channels before the
        first layer and unfolds the output after the last (as "simple diffusion" and DiT do):
        the network runs at 1/p of the resolution, about p^2 times cheaper per video.
    :param num_classes: if set, the network is class-conditional through ``y``.
    :param norm: "group" (GroupNorm over the video, improved-diffusion's) or "channel"
        (across channels at each position, which keeps a given digit's colour; ``nn.ChannelNorm``).
    :param attention_position: "none" (attention sees no positions) or "rope" (axial rotary
        positions in time and space, ``blocks.AttentionBlock``).
    :param self_condition: if True, the network also takes ``x_self_cond``, an earlier estimate of
        x_0 for the whole video (self-conditioning, Chen et al. 2022), as input channels: a draft
        of every frame to refine, so the frames of one sampling step can agree with what the last
        step drew. Without it (or given None) the input is zeros: a first estimate.
    :param kernel_head: r > 0 makes the output x_0 through ``blocks.KernelHead``: each frame a learned
        blend of its neighbour's x_0 moved by a learned per-pixel kernel of radius r pixels and a frame
        the network draws, built outwards from the given frames. The output must be x_0 alone
        (``out_channels == in_channels``). 0 (the default): the network draws every frame.
    :param kernel_copy: how the kernel head copies the neighbour: "gather", "scatter" or "scatter_mean"
        (``blocks.KernelHead``).
    :param kernel_motion: the kernel head's kernels are also given, through a learned map, how the
        content they copy moved in the step before (``blocks.KernelHead``'s ``motion``).
    :param kernel_motion_far: chains from a lone given frame get the motion to the next given frame
        along them, per step (``blocks.KernelHead``'s ``far``).
    :param alphas_cumprod: the diffusion's abar per (base) timestep, which the kernel head needs to
        weigh what its noisy input shows; only with ``kernel_head``.
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], channel_mult: Sequence[int],
                 dropout: float = 0.0, attention_type: str = "factorized", num_heads: int = 4,
                 num_head_channels: int = -1, use_scale_shift_norm: bool = True, use_checkpoint: bool = False,
                 mask_input: bool = True, num_classes: Optional[int] = None, conv_type: str = "3d",
                 patch_size: int = 1, given_frame_input: bool = False, given_frames: int = 1,
                 given_correlation: int = 0,
                 norm: str = "group", frame_levels: bool = False,
                 attention_position: str = "none", self_condition: bool = False, kernel_head: int = 0,
                 kernel_copy: str = "gather", kernel_motion: bool = False, kernel_motion_far: bool = False,
                 alphas_cumprod: Optional[Sequence[float]] = None):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if given_frame_input and not mask_input:
            raise ValueError("given_frame_input needs mask_input: the network must know which frames are given")
        if given_frames not in (1, 2):
            raise ValueError(f"given_frames must be 1 or 2, got {given_frames}")
        self.given_frame_input = given_frame_input
        self.given_frames = given_frames if given_frame_input else 0
        if given_correlation and not given_frame_input:
            raise ValueError("given_correlation needs given_frame_input: it compares the given frames")
        self.correlation = (GivenCorrelation(in_channels * patch_size ** 2, given_correlation)
                            if given_correlation else None)
        if frame_levels and not mask_input:
            raise ValueError("frame_levels needs mask_input: given frames are the ones at level 0")
        self.frame_levels = frame_levels
        if kernel_head and out_channels != in_channels:
            raise ValueError("kernel_head makes x_0 alone: out_channels must equal in_channels (no learned variance)")
        if kernel_motion and not kernel_head:
            raise ValueError("kernel_motion needs kernel_head: it feeds the head's kernels")
        if kernel_motion_far and not kernel_motion:
            raise ValueError("kernel_motion_far needs kernel_motion: it is a motion state for the learned map")
        self.kernel_head = (KernelHead(in_channels, kernel_head, copy=kernel_copy, motion=kernel_motion,
                                       far=kernel_motion_far)
                            if kernel_head else None)
        if kernel_head and alphas_cumprod is None:
            raise ValueError("kernel_head needs alphas_cumprod: the head weighs its noisy input by the noise level")
        if kernel_head:  # from the configuration, not a weight: not saved
            self.register_buffer("abar", torch.as_tensor(alphas_cumprod, dtype=torch.float32), persistent=False)
        head_channels = self.kernel_head.extra_channels if self.kernel_head else 0
        self.self_condition = self_condition
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.patch_size = patch_size
        if conv_type not in CONV_TYPES:
            raise ValueError(f"conv_type must be one of {CONV_TYPES}, got {conv_type!r}")
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
        self.downsampling = patch_size * 2 ** (len(channel_mult) - 1)
        if image_size % self.downsampling:
            raise ValueError(f"--image_size {image_size} is not divisible by the total downsampling "
                             f"{self.downsampling} of channel_mult {tuple(channel_mult)} and patch_size {patch_size}")
        self.in_channels = in_channels
        self.mask_input = mask_input
        self.num_classes = num_classes
        self.model_channels = model_channels
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes, emb_dim) if num_classes else None

        def res(ch_in, ch_out):
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm, use_checkpoint, conv_type, norm)

        def attn(ch):
            return attention(ch, attention_type, num_heads, num_head_channels, use_checkpoint, norm, attention_position)

        attention_ds = {image_size // r for r in attention_resolutions if image_size % r == 0}
        ch = model_channels
        self.input_blocks = nn.ModuleList([TimestepSequential(
            conv3d(in_channels * patch_size ** 2 * (1 + self.given_frames + int(self_condition))
                   + int(mask_input) + self.given_frames
                   + (self.correlation.out_channels if self.correlation else 0), ch))])
        skip_channels = [ch]
        ds = patch_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepSequential(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_ds:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(normalization(ch, norm), nn.SiLU(), zero_module(conv3d(ch, (out_channels + head_channels) * patch_size ** 2)))

    def _embed(self, timesteps: torch.Tensor, obs_mask: Optional[torch.Tensor], n: int, frames: int) -> torch.Tensor:
        """[N, E] from one level per video, or with ``frame_levels`` [N, T, E] from one per frame."""
        if not self.frame_levels:
            if timesteps.shape != (n,):
                raise ValueError(f"timesteps must have shape [N] = {(n,)}, got {tuple(timesteps.shape)} "
                                 "(one level per frame needs a network built with frame_levels)")
            return self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if timesteps.ndim == 1:
            timesteps = timesteps[:, None].expand(n, frames)
        if timesteps.shape != (n, frames):
            raise ValueError(f"timesteps must have shape [N] or [N, T] = {(n, frames)}, got {tuple(timesteps.shape)}")
        levels = torch.where(obs_mask.to(timesteps.device) > 0, torch.zeros_like(timesteps), timesteps)
        emb = self.time_embed(timestep_embedding(levels.reshape(-1), self.model_channels))
        return emb.reshape(n, frames, -1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, obs_mask: Optional[torch.Tensor] = None,
                y: Optional[torch.Tensor] = None, x_self_cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        :param x: [N, C, T, H, W] noisy videos (observed frames already clean).
        :param timesteps: [N] diffusion timesteps, or with ``frame_levels`` [N, T] one per frame. With
            ``frame_levels`` the given frames are embedded at level 0 whatever is passed for them.
        :param obs_mask: [N, T], 1 where a frame is observed. Required when mask_input is on.
        :param y: [N] class labels, when class-conditional.
        :param x_self_cond: [N, C, T, H, W] an earlier estimate of x_0, for a network built with
            ``self_condition`` (None = zeros, a first estimate).
        :return: [N, out_channels, T, H, W].
        """
        if x.shape[-1] % self.downsampling or x.shape[-2] % self.downsampling:
            raise ValueError(f"frame size {tuple(x.shape[-2:])} is not divisible by the total downsampling "
                             f"{self.downsampling}")
        if (y is not None) != (self.label_emb is not None):
            raise ValueError("pass y if and only if the model is class-conditional (num_classes set)")
        if self.mask_input and obs_mask is None:
            raise ValueError("this model was built with mask_input: pass obs_mask [N, T]")
        emb = self._embed(timesteps, obs_mask, x.shape[0], x.shape[2])
        if self.label_emb is not None:
            label = self.label_emb(y)
            emb = emb + (label[:, None] if emb.ndim == 3 else label)
        if x_self_cond is not None and not self.self_condition:
            raise ValueError("x_self_cond was passed to a network built without self_condition")
        if x_self_cond is not None and x_self_cond.shape != x.shape:
            raise ValueError(f"x_self_cond must have the shape of x {tuple(x.shape)}, got {tuple(x_self_cond.shape)}")
        offsets = []
        inputs = [x]
        video = x
        ranks = max(self.given_frames, 2 if self.correlation is not None else 0)  # the correlation compares two
        given = [nearest_given_frames(x, obs_mask, rank) for rank in range(ranks)]
        for frames, offset in given[:self.given_frames]:
            inputs.append(frames)
            offsets.append(offset)
        if self.self_condition:
            inputs.append(torch.zeros_like(x) if x_self_cond is None else x_self_cond.to(x.dtype))
        x = torch.cat(inputs, dim=1) if len(inputs) > 1 else x
        x = patchify(x, self.patch_size)
        if self.mask_input:
            n, _, t, h, w = x.shape
            per_frame = [obs_mask.to(x.dtype)] + offsets
            x = torch.cat([x] + [v[:, None, :, None, None].expand(n, 1, t, h, w) for v in per_frame], dim=1)
        if self.correlation is not None:
            cost = self.correlation(patchify(given[0][0], self.patch_size), patchify(given[1][0], self.patch_size))
            any_given = (obs_mask > 0).any(dim=1).to(cost.dtype)  # no given frame: nothing to compare
            x = torch.cat([x, cost * any_given[:, None, None, None, None]], dim=1)
        if self.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d):
            x = x.contiguous(memory_format=torch.channels_last_3d)  # match the weights' layout
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        out = unpatchify(self.out[2](norm_act(self.out[0], h)), self.patch_size)
        if self.kernel_head is None:
            return out
        if obs_mask is None:  # a network without the mask input: nothing is known to be given
            obs_mask = torch.zeros(video.shape[0], video.shape[2], device=video.device)
        return self.kernel_head(out, video, obs_mask.to(video.device), self.abar[timesteps.long()])
