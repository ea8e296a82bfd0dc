"""
The improved-diffusion UNet made 3D: frames are a third axis of every convolution,
downsampling halves height and width only, and attention is factorized into a spatial
and a temporal pass (or, optionally, one full space-time pass as RaMViD does).

The network owns nothing but the prediction. It is told which frames are observed
through ``obs_mask`` only when ``mask_input`` is on; with it off it ignores the mask,
which reproduces RaMViD's (unaware) network for comparison.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import math

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
    source = two_nearest_given(obs_mask)[0][:, :, 0]  # [N, T]
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


def two_nearest_given(obs_mask: torch.Tensor):
    """
    For every frame, its nearest given frame and the next nearest (the earlier one on a tie).

    :param obs_mask: [N, T], 1 on given frames.
    :return: (source [N, T, 2] frame indices, valid [N, T, 2] bool: False where the video has
        fewer given frames than that).
    """
    t = obs_mask.shape[1]
    frames = torch.arange(t, device=obs_mask.device, dtype=torch.float32)
    cost = (frames[None, :, None] - frames[None, None, :]).abs() + 1e-3 * frames[None, None, :]
    cost = cost + (1 - obs_mask.float())[:, None, :] * 1e6  # [N, T (to), T (from)]
    order = cost.argsort(dim=2)[:, :, :2]
    count = obs_mask.float().sum(dim=1)
    valid = torch.stack([count >= 1, count >= 2], dim=1)[:, None, :].expand(-1, t, -1)
    return order, valid


def shifted_reads(frames: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """
    ``frames`` read at every pixel plus a whole-pixel displacement per candidate (positions
    outside the frame read its border).

    :param frames: [N, T, C, H, W], one source frame per target frame.
    :param dy: [N, T, K] integer row displacements; ``dx`` likewise for columns.
    :return: [N, T, K, C, H, W].
    """
    n, t, c, h, w = frames.shape
    k = dy.shape[2]
    rows = (torch.arange(h, device=frames.device)[:, None] + dy[..., None, None]).clamp(0, h - 1)  # [N, T, K, H, 1]
    cols = (torch.arange(w, device=frames.device)[None, :] + dx[..., None, None]).clamp(0, w - 1)  # [N, T, K, 1, W]
    index = (rows * w + cols).reshape(n, t, k, 1, h * w).expand(n, t, k, c, h * w)
    src = frames.reshape(n, t, 1, c, h * w).expand(n, t, k, c, h * w)
    return torch.gather(src, 4, index).reshape(n, t, k, c, h, w)


class WarpHead(nn.Module):
    """
    The prediction as the given frames carried on at a constant velocity, blended with a
    synthesis where that does not hold.

    Candidate velocities are every whole-pixel v = (vy, vx) with |vy|, |vx| <= ``radius``
    pixels per frame. Frame k reads its nearest given frame s at p - (k - s) v for each
    candidate (content moving at v lands there). Where a second given frame s' is there too,
    each candidate's cost is how badly it explains the given frame s from s', matched over a
    9 x 9 patch: |frame_s(q) - frame_s'(q - (s - s') v)|^2 at the pixel q it reads (a cost
    volume, as optical-flow networks build; near 0 only for the velocity the content has).
    The network outputs per pixel one logit per candidate, a salience z, a blend logit and C
    channels F; the head returns [F, W] with

        W = m * sum_v softmax_v(logit_v - beta cost_v + gamma e_v + z_v) read_v,   m = sigmoid(blend + 3),

    e_v the motion evidence of the pixel candidate v reads (how much better its best velocity
    explains it than standing still) and z_v the network's salience there: many velocities
    explain a target pixel as background that stays, and these let the one that brings a
    moving object win (moving things occlude). m = 0 where no frame is given; beta and gamma
    are learned (from 100 and 20). The diffusion process writes x_0 around W
    (``GaussianDiffusion(prior_mean=True)``): x_0 = W + F, the warp corrected by F where it does
    not hold (F counting only where the warp is blended out measured worse: 18.52 dB against
    19.30 on 2 -> 6 after 600 steps). Untrained (zero output layer), W is the
    constant-velocity continuation of the given frames; the network learns where it does not
    hold (bounces, overlapping digits, a single given frame) and what to draw there.
    """

    def __init__(self, radius: int = 3):
        super().__init__()
        if radius < 0:
            raise ValueError(f"warp radius must be >= 0, got {radius}")
        self.radius = radius
        r = torch.arange(-radius, radius + 1)
        self.register_buffer("velocities", torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).reshape(-1, 2),
                             persistent=False)
        self.log_beta = nn.Parameter(torch.tensor(math.log(100.0)))
        self.log_gamma = nn.Parameter(torch.tensor(math.log(20.0)))

    @property
    def num_candidates(self) -> int:
        return (2 * self.radius + 1) ** 2

    def num_outputs(self, channels: int) -> int:
        return self.num_candidates + 2 + channels

    def match(self, x: torch.Tensor, obs_mask: torch.Tensor) -> "WarpMatch":
        """
        What the given frames alone say (no gradient): every candidate's read, its cost and
        motion evidence, and W_0, the warp with no learned term (the block matcher).

        :param x: [N, C, T, H, W] the network's input (given frames clean).
        :param obs_mask: [N, T], 1 on given frames.
        """
        k = self.num_candidates
        n, c, t, h, w = x.shape
        source, valid = two_nearest_given(obs_mask)  # [N, T, 2]: each frame's nearest given frames
        here = torch.arange(t, device=x.device)[None, :]
        vel = self.velocities.to(x.device)

        def along(maps, own=False):
            """Per target frame, ``maps`` [N, T, C', H, W] of its nearest given frame read along every
            candidate velocity -> [N, T, K, C', H, W]; with ``own``, maps [N, T, K, H, W] holds one map
            per candidate and each candidate reads its own -> [N, T, K, H, W]."""
            src = torch.gather(maps, 1, source[:, :, 0, None, None, None].expand(n, t, *maps.shape[2:]))
            elapsed = (here - source[:, :, 0])[..., None]  # [N, T, 1] frames since (or until) the source
            dy, dx = -elapsed * vel[None, None, :, 0], -elapsed * vel[None, None, :, 1]
            if not own:
                return shifted_reads(src, dy, dx)
            return shifted_reads(src.reshape(n, t * k, 1, h, w), dy.reshape(n, t * k, 1),
                                 dx.reshape(n, t * k, 1)).reshape(n, t, k, h, w)

        with torch.no_grad():
            frames = x.float().permute(0, 2, 1, 3, 4)  # [N, T, C, H, W]
            content = along(frames)  # [N, T, K, C, H, W]
            # Each given frame's cost volume against its partner (the nearest other given frame):
            # how well each velocity explains every pixel of it, matched over a 9 x 9 patch (one
            # pixel's colour is matched by many wrong velocities, a patch's rarely; untrained,
            # 2 -> 6 on held-out digits: 3x3 18.7 dB, 5x5 22.4, 7x7 25.4, 9x9 26.2).
            partner = source[:, :, 1]
            lag = (here - partner)[..., None]
            earlier = shifted_reads(torch.gather(frames, 1, partner[:, :, None, None, None].expand_as(frames)),
                                    -lag * vel[None, None, :, 0], -lag * vel[None, None, :, 1])
            cost = (frames[:, :, None] - earlier).square().mean(dim=3)  # [N, T, K, H, W]
            cost = F.avg_pool2d(cost.reshape(n * t * k, 1, h, w), 9, stride=1, padding=4,
                                count_include_pad=False).reshape(n, t, k, h, w) * valid[:, :, 1, None, None, None]
            # Motion evidence: how much better the best velocity explains a pixel than standing
            # still. Many velocities explain a target pixel as background that stays; the
            # evidence lets the one that brings a moving object there win (moving things occlude).
            evidence = cost[:, :, k // 2] - cost.min(dim=2).values  # [N, T, H, W]
            cost, evidence = along(cost, own=True), along(evidence[:, :, None])[:, :, :, 0]
            score = self.log_gamma.exp() * evidence - self.log_beta.exp() * cost
            unlearned = (torch.softmax(score, dim=2)[:, :, :, None] * content).sum(dim=2)
            unlearned = unlearned * valid[:, :, 0, None, None, None]
        return WarpMatch(content=content, cost=cost, evidence=evidence, valid=valid, along=along,
                         unlearned=unlearned.permute(0, 2, 1, 3, 4).to(x.dtype))

    def forward(self, raw: torch.Tensor, match: "WarpMatch") -> torch.Tensor:
        """
        :param raw: [N, K + 2 + C, T, H, W] the network's output.
        :param match: ``self.match`` of the network's input.
        :return: [N, 2C, T, H, W]: F, then W.
        """
        k = self.num_candidates
        logits, salience, blend = raw[:, :k].float(), raw[:, k:k + 1].float(), raw[:, k + 1:k + 2].float()
        correction = raw[:, k + 2:]
        score = (logits.permute(0, 2, 1, 3, 4) - self.log_beta.exp() * match.cost
                 + self.log_gamma.exp() * match.evidence
                 + match.along(salience.permute(0, 2, 1, 3, 4))[:, :, :, 0])
        weights = torch.softmax(score, dim=2)
        prior = (weights[:, :, :, None] * match.content).sum(dim=2)  # [N, T, C, H, W]
        m = torch.sigmoid(blend + 3.0) * match.valid[:, None, :, 0, None, None]
        prior = m * prior.permute(0, 2, 1, 3, 4)
        return torch.cat([correction, prior.to(raw.dtype)], dim=1)


@dataclass
class WarpMatch:
    """``WarpHead.match``: the candidates' reads [N, T, K, C, H, W], their costs and motion
    evidence [N, T, K, H, W], which nearest given frames exist [N, T, 2], the read along the
    candidates (``along``), and W_0 [N, C, T, H, W], the warp before anything is learned."""
    content: torch.Tensor
    cost: torch.Tensor
    evidence: torch.Tensor
    valid: torch.Tensor
    along: Callable
    unlearned: torch.Tensor


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
        [F, W], W the given frames continued at a chosen constant velocity, ``WarpHead``, for
        a diffusion process with ``prior_mean``); "warp" needs ``given_frame_input``.
    :param warp_radius: the warp head's largest velocity, pixels per frame in each direction.
    :param warp_input: with the warp head, every frame also gets W_0 (the warp before anything
        is learned, ``WarpHead.match``) as input channels. x_0 = W + F asks F for x_t - W at low
        noise and for the warp's failures at high noise; without W at hand the network has to
        rebuild the warp inside itself to say either.
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], channel_mult: Sequence[int],
                 dropout: float = 0.0, attention_type: str = "factorized", num_heads: int = 4,
                 num_head_channels: int = -1, use_scale_shift_norm: bool = True, use_checkpoint: bool = False,
                 mask_input: bool = True, num_classes: Optional[int] = None, conv_type: str = "3d",
                 patch_size: int = 1, given_frame_input: bool = False, norm: str = "group",
                 output_head: str = "direct", warp_radius: int = 3, warp_input: bool = False):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if output_head not in OUTPUT_HEADS:
            raise ValueError(f"output_head must be one of {OUTPUT_HEADS}, got {output_head!r}")
        if output_head == "warp" and not given_frame_input:
            raise ValueError("output_head 'warp' needs given_frame_input: it warps the nearest given frame")
        if output_head == "warp" and out_channels != in_channels:
            raise ValueError("output_head 'warp' predicts the frames only (no learned variance)")
        self.head = WarpHead(warp_radius) if output_head == "warp" else None
        if warp_input and output_head != "warp":
            raise ValueError("warp_input needs output_head 'warp': it is the warp head's unlearned warp")
        self.warp_input = warp_input
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
            conv3d(in_channels * patch_size ** 2 * (1 + int(given_frame_input) + int(warp_input)) + int(mask_input)
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
        raw_channels = self.head.num_outputs(in_channels) if self.head else out_channels
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
        match = self.head.match(x, obs_mask) if self.head is not None else None
        if self.given_frame_input:
            given, offset = nearest_given_frames(x, obs_mask)
            x = torch.cat([x, given] + ([match.unlearned] if self.warp_input else []), dim=1)
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
            out = self.head(out, match)
        return out
