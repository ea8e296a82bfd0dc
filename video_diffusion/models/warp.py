"""
The given frames carried forward: each frame's nearest given frames, whole-pixel shifted
reads, and the warp head, which writes the prediction as the given frames continued at a
constant velocity chosen per pixel from a cost volume (``WarpHead``).
"""

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .tracker import track

# One grey level of a uint8 frame in the [-1, 1] units of the network (``WarpHead(deadzone=True)``).
DEADZONE = 2.0 / 255.0
# The warp's blend with nothing learned, sigmoid(3) (``WarpHead(exact=True)`` divides it out).
_SIGMOID_3 = 1.0 / (1.0 + math.exp(-3.0))


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


def inside_reads(h: int, w: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """
    Which reads of ``shifted_reads`` land inside the frame (the others read its border).

    :param dy: [N, T, K] integer row displacements; ``dx`` likewise for columns.
    :return: [N, T, K, H, W] bool.
    """
    rows = torch.arange(h, device=dy.device)[:, None] + dy[..., None, None]  # [N, T, K, H, 1]
    cols = torch.arange(w, device=dx.device)[None, :] + dx[..., None, None]  # [N, T, K, 1, W]
    return ((rows >= 0) & (rows < h)) & ((cols >= 0) & (cols < w))


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

    ``exact`` starts m at exactly 1 (m = min(1, sigmoid(blend + 3) / sigmoid(3))) and beta,
    gamma 10x higher, so that the untrained head reproduces a freely moving digit to the grey
    level; ``deadzone`` lets a correction under one grey level count 1% only; ``inside_only``
    leaves the reads that fall outside the frame out of the 9 x 9 cost; ``objects`` replaces the
    per-pixel choice by the object tracker's prediction (``tracker.track``: objects moved on,
    reflecting off the borders; W_0 = it, the candidates' logits unused), for data of objects on
    a black background. It runs on the CPU, per video, on every call. With ``gate`` as well, c is
    the tracker's verdict per frame (1 where its objects redraw the other given frames), and
    both F and the blend are held there: x_0 = c W_0 + (1 - c)(m W_0 + F), so the network
    learns only what the tracker cannot explain (touching digits, one given frame, generation).
    ``verdict="pixel"`` makes c the tracker's verdict per pixel (``track(per_pixel=True)``): in a
    frame it does not explain, c is 0 only where what it leaves unexplained can land, so two
    touching digits no longer hand the whole frame to the network.
    """

    def __init__(self, radius: int = 3, gate: bool = False, exact: bool = False, deadzone: bool = False,
                 inside_only: bool = False, objects: bool = False, hold: bool = False, verdict: str = "frame"):
        super().__init__()
        if hold and not gate:
            raise ValueError("the warp head's hold channel is the gate's: hold needs gate")
        if verdict not in ("frame", "pixel"):
            raise ValueError(f"the tracker's verdict is per 'frame' or per 'pixel', got {verdict!r}")
        if verdict != "frame" and not (objects and gate):
            raise ValueError("a verdict per pixel is the tracker's, for the gate: it needs objects and gate")
        self.per_pixel = verdict == "pixel"
        self.gate, self.exact, self.deadzone, self.inside_only = gate, exact, deadzone, inside_only
        self.objects, self.hold = objects, hold
        self._tracked = {}  # the last batch's tracker prediction (``tracked``)
        if radius < 0:
            raise ValueError(f"warp radius must be >= 0, got {radius}")
        self.radius = radius
        r = torch.arange(-radius, radius + 1)
        self.register_buffer("velocities", torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).reshape(-1, 2),
                             persistent=False)
        # With ``exact`` the choice starts 10x sharper: at beta 100 the softmax still mixes
        # candidates whose 9 x 9 costs differ by a few grey levels, which blurs every frame a
        # little; at 1,000 it is a hard choice wherever one velocity explains the given frames
        # (untrained, 2 -> 6 on 16 held-out digits: 26.1 dB / 0.746 -> 37.7 / 0.759).
        sharp = 10.0 if exact else 1.0
        self.log_beta = nn.Parameter(torch.tensor(math.log(100.0 * sharp)))
        self.log_gamma = nn.Parameter(torch.tensor(math.log(20.0 * sharp)))

    @property
    def num_candidates(self) -> int:
        return (2 * self.radius + 1) ** 2

    def num_outputs(self, channels: int) -> int:
        return self.num_candidates + 2 + channels

    def match(self, x: torch.Tensor, obs_mask: torch.Tensor) -> "WarpMatch":
        """
        What the given frames alone say (no gradient): every candidate's read, its cost and
        motion evidence, and W_0, the warp with no learned term (the block matcher; with
        ``objects``, the object tracker's prediction and verdict alone).

        :param x: [N, C, T, H, W] the network's input (given frames clean).
        :param obs_mask: [N, T], 1 on given frames.
        """
        k = self.num_candidates
        n, c, t, h, w = x.shape
        source, valid = two_nearest_given(obs_mask)  # [N, T, 2]: each frame's nearest given frames
        if self.objects:
            # The tracker's prediction replaces the candidates' warp whole, and its verdict the
            # block matcher's confidence: the cost volume would be built only to be dropped.
            with torch.no_grad():
                unlearned, explained = tracked(x, obs_mask, self.radius, self._tracked, self.per_pixel)
            confidence = explained[:, None] if self.per_pixel else explained[:, None, :, None, None].expand(n, 1, t, h, w)
            return WarpMatch(content=None, cost=None, evidence=None, valid=valid, along=None,
                             unlearned=unlearned.to(x.dtype), confidence=confidence.to(x.dtype))
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
            pool = lambda m: F.avg_pool2d(m.reshape(n * t * k, 1, h, w), 9, stride=1, padding=4,  # noqa: E731
                                          count_include_pad=False).reshape(n, t, k, h, w)
            if self.inside_only:
                # A read from outside the frame says nothing about the velocity: clamped, it reads
                # the border pixel, and a digit that touched the border in the earlier frame then
                # spoils the 9 x 9 cost of every pixel near it for the velocity it really has.
                inside = inside_reads(h, w, -lag * vel[None, None, :, 0], -lag * vel[None, None, :, 1]).float()
                share = pool(inside)
                # where most of the patch's reads fall outside, the few left are no evidence (a
                # few black pixels match anything): such a candidate gets the cost of a mismatch
                cost = torch.where(share >= 0.5, pool(cost * inside) / share.clamp(min=1e-6), torch.ones_like(share))
            else:
                cost = pool(cost)
            cost = cost * valid[:, :, 1, None, None, None]
            # Motion evidence: how much better the best velocity explains a pixel than standing
            # still. Many velocities explain a target pixel as background that stays; the
            # evidence lets the one that brings a moving object there win (moving things occlude).
            evidence = cost[:, :, k // 2] - cost.min(dim=2).values  # [N, T, H, W]
            cost, evidence = along(cost, own=True), along(evidence[:, :, None])[:, :, :, 0]
            score = self.log_gamma.exp() * evidence - self.log_beta.exp() * cost
            chosen = torch.softmax(score, dim=2)
            unlearned = (chosen[:, :, :, None] * content).sum(dim=2)
            unlearned = unlearned * valid[:, :, 0, None, None, None]
            # How well the unlearned warp's own choice explains the given frames at each pixel: 1
            # where its velocity matches them exactly, towards 0 where no velocity does (an
            # occlusion, a bounce) or where one given frame leaves the velocity open.
            confidence = torch.exp(-self.log_beta.exp() * (chosen * cost).sum(dim=2)) * valid[:, :, 1, None, None]
        unlearned = unlearned.permute(0, 2, 1, 3, 4)
        return WarpMatch(content=content, cost=cost, evidence=evidence, valid=valid, along=along,
                         unlearned=unlearned.to(x.dtype),
                         confidence=confidence[:, None].to(x.dtype))

    def forward(self, raw: torch.Tensor, match: "WarpMatch") -> torch.Tensor:
        """
        :param raw: [N, K + 2 + C, T, H, W] the network's output.
        :param match: ``self.match`` of the network's input.
        :return: [N, 2C, T, H, W]: F, then W; with ``hold`` [N, 2C + 1, T, H, W], then c, where
            the gate holds x_0 to W: a diffusion with EDM's skip (``sigma_data``) must not pass
            the noisy input through there.
        """
        k = self.num_candidates
        logits, salience, blend = raw[:, :k].float(), raw[:, k:k + 1].float(), raw[:, k + 1:k + 2].float()
        correction = raw[:, k + 2:]
        if self.deadzone:
            # Below one grey level (2/255 in [-1, 1] units) the correction counts 1% only: a network
            # that has not learned to output exactly 0 where the warp is right would otherwise move
            # every pixel by a level or two, and a frame the warp carried exactly stops being exact.
            small = correction.clamp(-DEADZONE, DEADZONE)
            correction = correction - 0.99 * small
        if self.gate:  # the correction acts where the given frames do not explain the warp
            correction = correction * (1 - match.confidence)
        if self.objects:  # the object tracker's prediction; the candidates' logits are not used
            prior = match.unlearned.float()  # [N, C, T, H, W]
        else:
            score = (logits.permute(0, 2, 1, 3, 4) - self.log_beta.exp() * match.cost
                     + self.log_gamma.exp() * match.evidence
                     + match.along(salience.permute(0, 2, 1, 3, 4))[:, :, :, 0])
            weights = torch.softmax(score, dim=2)
            prior = (weights[:, :, :, None] * match.content).sum(dim=2).permute(0, 2, 1, 3, 4)  # [N, C, T, H, W]
        m = torch.sigmoid(blend + 3.0)
        if self.exact:  # fully blended in (m = 1) until the network lowers it: sigmoid(3) = 0.953 would
            # leave black at grey level 6, which SSIM on a black background counts heavily
            m = (m / _SIGMOID_3).clamp(max=1.0)
        if self.gate and self.objects:  # and where the tracker explains them, its prediction stands whole
            m = match.confidence + (1 - match.confidence) * m
        m = m * match.valid[:, None, :, 0, None, None]
        prior = m * prior
        held = [match.confidence.to(raw.dtype)] if self.hold else []
        return torch.cat([correction, prior.to(raw.dtype)] + held, dim=1)


def tracked(x: torch.Tensor, obs_mask: torch.Tensor, radius: int, memo: dict = None, per_pixel: bool = False):
    """
    The object tracker's prediction of every video from its given frames (zeros for a video
    with no given frame).

    :param x: [N, C, T, H, W] in [-1, 1], the given frames holding their clean values.
    :param obs_mask: [N, T], 1 on given frames.
    :param memo: a dict that keeps the last call's result: a sampler calls the network many times
        on the same given frames, and the tracker reads nothing else.
    :param per_pixel: the verdict per pixel (``track(per_pixel=True)``).
    :return: ([N, C, T, H, W] float32 in [-1, 1], [N, T] bool: the frames the tracker explains,
        ``track(explained=True)``; [N, T, H, W] with ``per_pixel``).
    """
    given = obs_mask.detach().bool().cpu().numpy()
    frames = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
    frames = frames * given[:, :, None, None, None]
    key = (frames.tobytes(), given.tobytes(), radius, x.device, per_pixel)
    if memo is not None and memo.get("key") == key:
        return memo["value"]
    out = torch.zeros(x.shape, dtype=torch.float32)
    explained = torch.zeros((x.shape[0], x.shape[2]) + (tuple(x.shape[3:]) if per_pixel else ()), dtype=torch.bool)
    for i in range(x.shape[0]):
        if given[i].any():
            video, ok = track(frames[i], np.flatnonzero(given[i]), radius, explained=True, per_pixel=per_pixel)
            out[i] = torch.from_numpy(video).permute(3, 0, 1, 2) / 127.5 - 1
            explained[i] = torch.from_numpy(ok)
    value = (out.to(x.device), explained.to(x.device))
    if memo is not None:
        memo.update(key=key, value=value)
    return value


@dataclass
class WarpMatch:
    """``WarpHead.match``: the candidates' reads [N, T, K, C, H, W], their costs and motion
    evidence [N, T, K, H, W], which nearest given frames exist [N, T, 2], the read along the
    candidates (``along``), W_0 [N, C, T, H, W], the warp before anything is learned, and its
    confidence c [N, 1, T, H, W] = exp(-beta * the cost of W_0's choice), 0 without a second given frame.
    With ``objects``, W_0 is the tracker's prediction, c its verdict (1 on the frames it explains,
    else 0; per pixel with ``verdict="pixel"``), and the block matcher's fields (content, cost, evidence, along) are None."""
    content: Optional[torch.Tensor]
    cost: Optional[torch.Tensor]
    evidence: Optional[torch.Tensor]
    valid: torch.Tensor
    along: Optional[Callable]
    unlearned: torch.Tensor
    confidence: torch.Tensor  # [N, 1, T, H, W]
