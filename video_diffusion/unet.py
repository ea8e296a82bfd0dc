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
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from .nn import NORMS, normalization, timestep_embedding, zero_module

ATTENTION_TYPES = ("factorized", "full")
OUTPUT_HEADS = ("direct", "warp")


CONV_TYPES = ("3d", "2+1d")


def conv3d(in_ch: int, out_ch: int, kernel: int = 3, stride=1) -> nn.Conv3d:
    return nn.Conv3d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2)


class Conv2Plus1d(nn.Sequential):
    """
    A 3x3x3 convolution factorised into a 1x3x3 spatial one followed by a 3x1x1 temporal
    one (Tran et al. 2018, "R(2+1)D"): 12 instead of 27 multiply-adds per channel pair,
    so a CPU sees about twice the videos per second, at the same receptive field.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.Conv3d(in_ch, out_ch, (1, 3, 3), padding=(0, 1, 1)),
                         nn.Conv3d(out_ch, out_ch, (3, 1, 1), padding=(1, 0, 0)))


def zero_output(conv: nn.Module) -> nn.Module:
    """Zero the last layer of a convolution so the residual branch starts as the identity
    (zeroing both halves of a (2+1)D pair would leave neither a gradient)."""
    zero_module(conv[-1] if isinstance(conv, Conv2Plus1d) else conv)
    return conv


def res_conv(in_ch: int, out_ch: int, conv_type: str) -> nn.Module:
    """The 3x3x3 convolution of a residual block, full or (2+1)D."""
    return conv3d(in_ch, out_ch) if conv_type == "3d" else Conv2Plus1d(in_ch, out_ch)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[N, C, T, H, W] -> [N, C*p*p, T, H/p, W/p]: each p x p patch of a frame becomes channels."""
    if p == 1:
        return x
    n, c, t, h, w = x.shape
    return x.reshape(n, c, t, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 3, 5).reshape(n, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of ``patchify``."""
    if p == 1:
        return x
    n, cpp, t, h, w = x.shape
    c = cpp // (p * p)
    return x.reshape(n, c, p, p, t, h, w).permute(0, 1, 4, 5, 2, 6, 3).reshape(n, c, t, h * p, w * p)


def nearest_given_frames(x: torch.Tensor, obs_mask: torch.Tensor):
    """
    For every frame, the given frame nearest to it in time (the earlier one on a tie) and
    how far away it is; zeros for a video with no given frame.

    :param x: [N, C, T, H, W], the given frames holding their clean values.
    :param obs_mask: [N, T], 1 on given frames.
    :return: ([N, C, T, H, W] the nearest given frames, [N, T] signed offsets frame - source
        divided by T).
    """
    t = x.shape[2]
    frames = torch.arange(t, device=x.device, dtype=torch.float32)
    distance = (frames[None, :, None] - frames[None, None, :]).abs()  # [1, T (to), T (from)]
    # only given frames are candidates; the 1e-3 * index breaks ties towards the earlier frame
    cost = distance + 1e-3 * frames[None, None, :] + (1 - obs_mask.float())[:, None, :] * 1e6
    source = cost.argmin(dim=2)  # [N, T]
    any_given = obs_mask.any(dim=1).to(x.dtype)
    picked = torch.gather(x, 2, source[:, None, :, None, None].expand_as(x)) * any_given[:, None, None, None, None]
    offset = (frames[None, :] - source.float()) / t * any_given[:, None]
    return picked, offset.to(x.dtype)


class TimestepBlock(nn.Module):
    """A module whose forward also takes the timestep embedding."""

    def forward(self, x, emb):  # pragma: no cover - interface only
        raise NotImplementedError


class TimestepSequential(nn.Sequential, TimestepBlock):
    """Sequential that hands the embedding to the children that want it."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Halve height and width with a strided convolution; the frame axis is kept."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = conv3d(channels, channels, 3, stride=(1, 2, 2))

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Double height and width (nearest), then a convolution; the frame axis is kept."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3d(channels, channels, 3)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"))


class ResBlock(TimestepBlock):
    """
    Residual block with 3D convolutions. The timestep embedding enters either added to
    the features or, with ``use_scale_shift_norm``, as a scale and shift after the
    second normalisation (FiLM), which improved-diffusion found to work better.
    """

    def __init__(self, channels, emb_channels, dropout, out_channels=None, use_scale_shift_norm=True,
                 use_checkpoint=False, conv_type="3d", norm="group"):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(normalization(channels, norm), nn.SiLU(), res_conv(channels, out_channels, conv_type))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_norm = normalization(out_channels, norm)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), zero_output(res_conv(out_channels, out_channels, conv_type)))
        self.skip = nn.Identity() if out_channels == channels else conv3d(channels, out_channels, 1)

    def forward(self, x, emb):
        if self.use_checkpoint and self.training:
            return grad_checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x, emb):
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + emb_out)
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """
    Multi-head self-attention over one axis group of a [N, C, T, H, W] tensor, through
    ``scaled_dot_product_attention`` (flash / memory-efficient kernels where available).

    ``axes`` picks the tokens: "space" attends within each frame (H*W tokens),
    "time" attends across frames at each pixel (T tokens), "spacetime" attends over all
    T*H*W positions (RaMViD's full attention; quadratic in the video size).
    """

    def __init__(self, channels, axes, num_heads=1, num_head_channels=-1, use_checkpoint=False, norm="group"):
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(f"--num_head_channels {num_head_channels} does not divide {channels} channels")
            num_heads = channels // num_head_channels
        if channels % num_heads:
            raise ValueError(f"--num_heads {num_heads} does not divide {channels} channels")
        self.axes = axes
        self.num_heads = num_heads
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels, norm)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv3d(channels, channels, 1))

    def forward(self, x):
        if self.use_checkpoint and self.training:
            return grad_checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x):
        n, c, t, h, w = x.shape
        heads, dh = self.num_heads, c // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(n, 3, heads, dh, t, h, w)
        if self.axes == "space":  # tokens: h*w, batch: n*t
            qkv = qkv.permute(1, 0, 4, 2, 5, 6, 3).reshape(3, n * t, heads, h * w, dh)
        elif self.axes == "time":  # tokens: t, batch: n*h*w
            qkv = qkv.permute(1, 0, 5, 6, 2, 4, 3).reshape(3, n * h * w, heads, t, dh)
        else:  # tokens: t*h*w, batch: n
            qkv = qkv.permute(1, 0, 2, 4, 5, 6, 3).reshape(3, n, heads, t * h * w, dh)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        if self.axes == "space":
            out = out.reshape(n, t, heads, h, w, dh).permute(0, 2, 5, 1, 3, 4)
        elif self.axes == "time":
            out = out.reshape(n, h, w, heads, t, dh).permute(0, 3, 5, 4, 1, 2)
        else:
            out = out.reshape(n, heads, t, h, w, dh).permute(0, 1, 5, 2, 3, 4)
        return x + self.proj_out(out.reshape(n, c, t, h, w))


def attention(channels, attention_type, num_heads, num_head_channels, use_checkpoint, norm="group") -> nn.Module:
    """Factorized space-then-time attention, or one full space-time attention."""
    if attention_type == "full":
        return AttentionBlock(channels, "spacetime", num_heads, num_head_channels, use_checkpoint, norm)
    return nn.Sequential(
        AttentionBlock(channels, "space", num_heads, num_head_channels, use_checkpoint, norm),
        AttentionBlock(channels, "time", num_heads, num_head_channels, use_checkpoint, norm),
    )


def warp(frames: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """
    Backward warping: each output pixel reads ``frames`` at its own position plus ``flow``
    (bilinear; positions outside the frame read its border).

    :param frames: [N, C, T, H, W].
    :param flow: [N, 2, T, H, W], (dy, dx) in pixels.
    :return: [N, C, T, H, W].
    """
    n, c, t, h, w = frames.shape
    ys = torch.arange(h, device=frames.device, dtype=flow.dtype)
    xs = torch.arange(w, device=frames.device, dtype=flow.dtype)
    # grid_sample's coordinates (align_corners=False): pixel j's centre sits at (2j + 1) / size - 1
    gy = (2 * (ys[None, None, :, None] + flow[:, 0]) + 1) / h - 1  # [N, T, H, W]
    gx = (2 * (xs[None, None, None, :] + flow[:, 1]) + 1) / w - 1
    grid = torch.stack([gx, gy], dim=-1).reshape(n * t, h, w, 2)
    flat = frames.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
    out = F.grid_sample(flat.float(), grid.float(), mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(n, t, c, h, w).permute(0, 2, 1, 3, 4).to(frames.dtype)


class WarpHead(nn.Module):
    """
    A prior mean of the prediction from warping the nearest given frame: the network's
    output holds per pixel a velocity u (2 channels, pixels per frame), a blend logit and C
    channels F, and the head returns [F, W] with

        W = m * warp(given, u * d),   m = sigmoid(logit + 2),

    d the frame's signed distance in frames to its given frame (so a digit moving at
    constant velocity needs one u for all frames) and m = 0 where no frame is given. The
    diffusion process turns [F, W] into x_0 around W (``GaussianDiffusion(prior_mean=True)``):
    the warp carries the given content (a digit's exact shape and colour) wherever it moves,
    F corrects what the warp cannot explain (occlusions, new content). At initialisation (zero
    output layer) W is the nearest given frame, mostly.
    """

    @staticmethod
    def num_outputs(channels: int) -> int:
        return 3 + channels

    def forward(self, raw: torch.Tensor, given: torch.Tensor, offset: torch.Tensor, any_given: torch.Tensor):
        """
        :param raw: [N, 3 + C, T, H, W] the network's output.
        :param given: [N, C, T, H, W] the nearest given frame of each frame.
        :param offset: [N, T] signed distance to it, in frames.
        :param any_given: [N], 1 where the video has a given frame.
        :return: [N, 2C, T, H, W]: F, then W.
        """
        velocity, logit, correction = raw[:, :2], raw[:, 2:3], raw[:, 3:]
        flow = velocity.float() * offset[:, None, :, None, None].float()
        blend = torch.sigmoid(logit.float() + 2.0) * any_given.float()[:, None, None, None, None]
        prior = (blend * warp(given, flow).float()).to(raw.dtype)
        return torch.cat([correction, prior], dim=1)


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
    :param patch_size: p > 1 folds each p x p patch of a frame into channels before the
        first layer and unfolds the output after the last (as "simple diffusion" and DiT do):
        the network runs at 1/p of the resolution, about p^2 times cheaper per video.
    :param num_classes: if set, the network is class-conditional through ``y``.
    :param norm: "group" (GroupNorm over the video, improved-diffusion's) or "channel"
        (across channels at each position, which keeps a given digit's colour; ``nn.ChannelNorm``).
    :param output_head: "direct" (the output is the prediction) or "warp" (the output is
        [F, W], W the nearest given frame warped by a predicted velocity, ``WarpHead``, for a
        diffusion process with ``prior_mean``); "warp" needs ``given_frame_input``.
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], channel_mult: Sequence[int],
                 dropout: float = 0.0, attention_type: str = "factorized", num_heads: int = 4,
                 num_head_channels: int = -1, use_scale_shift_norm: bool = True, use_checkpoint: bool = False,
                 mask_input: bool = True, num_classes: Optional[int] = None, conv_type: str = "3d",
                 patch_size: int = 1, given_frame_input: bool = False, norm: str = "group",
                 output_head: str = "direct"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if output_head not in OUTPUT_HEADS:
            raise ValueError(f"output_head must be one of {OUTPUT_HEADS}, got {output_head!r}")
        if output_head == "warp" and not given_frame_input:
            raise ValueError("output_head 'warp' needs given_frame_input: it warps the nearest given frame")
        if output_head == "warp" and out_channels != in_channels:
            raise ValueError("output_head 'warp' predicts the frames only (no learned variance)")
        self.head = WarpHead() if output_head == "warp" else None
        if given_frame_input and not mask_input:
            raise ValueError("given_frame_input needs mask_input: the network must know which frames are given")
        self.given_frame_input = given_frame_input
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
            return attention(ch, attention_type, num_heads, num_head_channels, use_checkpoint, norm)

        attention_ds = {image_size // r for r in attention_resolutions if image_size % r == 0}
        ch = model_channels
        self.input_blocks = nn.ModuleList([TimestepSequential(
            conv3d(in_channels * patch_size ** 2 * (1 + int(given_frame_input)) + int(mask_input)
                   + int(given_frame_input), ch))])
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
        raw_channels = WarpHead.num_outputs(in_channels) if self.head else out_channels
        self.out = nn.Sequential(normalization(ch, norm), nn.SiLU(), zero_module(conv3d(ch, raw_channels * patch_size ** 2)))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, obs_mask: Optional[torch.Tensor] = None,
                y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        :param x: [N, C, T, H, W] noisy videos (observed frames already clean).
        :param timesteps: [N] diffusion timesteps.
        :param obs_mask: [N, T], 1 where a frame is observed. Required when mask_input is on.
        :param y: [N] class labels, when class-conditional.
        :return: [N, out_channels, T, H, W] ([N, 2 in_channels, ...] with the warp head).
        """
        if x.shape[-1] % self.downsampling or x.shape[-2] % self.downsampling:
            raise ValueError(f"frame size {tuple(x.shape[-2:])} is not divisible by the total downsampling "
                             f"{self.downsampling}")
        if (y is not None) != (self.label_emb is not None):
            raise ValueError("pass y if and only if the model is class-conditional (num_classes set)")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.label_emb is not None:
            emb = emb + self.label_emb(y)
        if self.mask_input and obs_mask is None:
            raise ValueError("this model was built with mask_input: pass obs_mask [N, T]")
        offset = None
        if self.given_frame_input:
            given, offset = nearest_given_frames(x, obs_mask)
            x = torch.cat([x, given], dim=1)
            given_frames = given
        x = patchify(x, self.patch_size)
        if self.mask_input:
            n, _, t, h, w = x.shape
            per_frame = [obs_mask.to(x.dtype)] + ([offset] if offset is not None else [])
            x = torch.cat([x] + [v[:, None, :, None, None].expand(n, 1, t, h, w) for v in per_frame], dim=1)
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
        out = unpatchify(self.out(h), self.patch_size)
        if self.head is not None:
            out = self.head(out, given_frames, offset * obs_mask.shape[1], obs_mask.any(dim=1))
        return out
