"""
The UNet's building blocks, made 3D: convolutions over (frames, height, width), residual
blocks that take the timestep embedding, down- and upsampling in space only, attention
factorized into a spatial and a temporal pass (or one full space-time pass, as RaMViD's), the
given frames brought to every frame's place (and their correlation), and the patch folding that
runs the network at a lower resolution.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from .nn import norm_act, normalization, zero_module

ATTENTION_TYPES = ("factorized", "full")
KERNEL_COPIES = ("gather", "scatter", "scatter_mean")
CONV_TYPES = ("3d", "2+1d")


def nearest_given_frames(x: torch.Tensor, obs_mask: torch.Tensor, rank: int = 0):
    """
    For every frame, the given frame nearest to it in time (the earlier one on a tie) and
    how far away it is; zeros for a video with no given frame. With ``rank`` r > 0, the
    (r+1)-th nearest instead, or the nearest where a video gives no more than r frames.

    :param x: [N, C, T, H, W], the given frames holding their clean values.
    :param obs_mask: [N, T], 1 on given frames.
    :param rank: 0 for the nearest given frame, 1 for the second nearest, ...
    :return: ([N, C, T, H, W] the chosen given frames, [N, T] signed offsets frame - source
        divided by T).
    """
    t = x.shape[2]
    frames = torch.arange(t, device=x.device, dtype=torch.float32)
    # distance to every given frame; a tiny cost per index breaks ties towards the earlier one
    cost = (frames[None, :, None] - frames[None, None, :]).abs() + 1e-3 * frames[None, None, :]
    cost = cost + (1 - obs_mask.float())[:, None, :] * 1e6  # [N, T (to), T (from)]
    order = cost.argsort(dim=2)  # [N, T, T]: given frames first, nearest first
    count = obs_mask.bool().sum(dim=1)  # [N]
    source = torch.where((count > rank)[:, None], order[:, :, min(rank, t - 1)], order[:, :, 0])  # [N, T]
    any_given = (count > 0).to(x.dtype)
    picked = torch.gather(x, 2, source[:, None, :, None, None].expand_as(x)) * any_given[:, None, None, None, None]
    offset = (frames[None, :] - source.float()) / t * any_given[:, None]
    return picked, offset.to(x.dtype)


class GivenCorrelation(nn.Module):
    """
    A cost volume of the two nearest given frames (FlowNet's correlation layer, Dosovitskiy et
    al. 2015): both are embedded by a small learned 2D encoder, and at every place of the nearest
    one the cosine similarity of its feature with the second nearest's at each displacement of a
    (2r+1) x (2r+1) window becomes one channel. A displacement between two given frames is then
    one peak among channels at that place; without it the network must discover comparison
    itself from sums of its inputs (a convolution is linear in them, and matching is a product).
    Nothing in it knows what moves: the encoder is learned, the window is all it assumes.

    :param in_channels: channels of a (patch-folded) frame.
    :param radius: r, the largest displacement compared, in the network's cells (patch_size pixels).
    :param feature_channels: width of the encoder's features.
    """

    def __init__(self, in_channels: int, radius: int, feature_channels: int = 16):
        super().__init__()
        if radius < 1:
            raise ValueError(f"the correlation radius must be >= 1, got {radius}")
        self.radius = radius
        # 1 x 3 x 3: each frame on its own (3D weights, so channels_last_3d applies to them too)
        self.encoder = nn.Sequential(
            nn.Conv3d(in_channels, feature_channels, (1, 3, 3), padding=(0, 1, 1)), nn.SiLU(),
            nn.Conv3d(feature_channels, feature_channels, (1, 3, 3), padding=(0, 1, 1)))

    @property
    def out_channels(self) -> int:
        return (2 * self.radius + 1) ** 2

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(x), dim=1, eps=1e-6)  # cosine: a match scores 1 whatever the contrast

    def forward(self, nearest: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """
        :param nearest: [N, C, T, H, W], every frame's nearest given frame.
        :param second: [N, C, T, H, W], every frame's second nearest given frame.
        :return: [N, (2r+1)^2, T, H, W]; channel (dy + r) * (2r+1) + (dx + r) at (y, x) compares
            ``nearest`` at (y, x) with ``second`` at (y + dy, x + dx) (0 outside the frame).
        """
        h, w = nearest.shape[-2:]
        r = self.radius
        a = self._embed(nearest)
        b = F.pad(self._embed(second), (r, r, r, r))
        return torch.stack([(a * b[..., dy:dy + h, dx:dx + w]).sum(dim=1)
                            for dy in range(2 * r + 1) for dx in range(2 * r + 1)], dim=1)


def chain_order(obs_mask: torch.Tensor):
    """
    The order in which ``KernelHead`` builds a video's frames: outwards from its given frames,
    each frame from its neighbour on the side of the nearest given frame (the earlier one on a
    tie); a video with no given frame grows from its frame 0.

    :param obs_mask: [N, T], 1 on given frames.
    :return: ([N, T] steps from the nearest anchor, 0 on anchors; [N, T] the frame each frame is
        built from, itself on anchors).
    """
    n, t = obs_mask.shape
    frames = torch.arange(t, device=obs_mask.device)
    anchors = obs_mask > 0
    anchors = torch.where(anchors.any(dim=1, keepdim=True), anchors, frames[None] == 0)
    gap = (frames[None, :, None] - frames[None, None, :]).abs().float() + 1e-3 * frames[None, None, :].float()
    gap = gap + (~anchors).float()[:, None, :] * 1e6  # [N, T (to), T (from)]
    nearest = gap.argmin(dim=2)  # [N, T]
    distance = (frames[None] - nearest).abs()
    source = frames[None] - torch.sign(frames[None] - nearest)
    return distance, source


def local_kernel(source: torch.Tensor, logits: torch.Tensor, radius: int) -> torch.Tensor:
    """
    A per-pixel kernel applied to a frame: out(p) = sum_d softmax(logits)(p, d) source(p + d)
    over the displacements d of a (2r+1) x (2r+1) window, the frame's border repeated outside it
    (dynamic filter networks, De Brabandere et al. 2016; CDNA, Finn et al. 2016).

    :param source: [M, C, H, W] frames to take pixels from.
    :param logits: [M, (2r+1)^2, H, W]; channel (dy + r) * (2r+1) + (dx + r) weighs source(y + dy, x + dx).
    :param radius: r.
    :return: [M, C, H, W].
    """
    m, c, h, w = source.shape
    k = 2 * radius + 1
    patches = F.unfold(F.pad(source, (radius,) * 4, mode="replicate"), k).view(m, c, k * k, h, w)
    return (patches * logits.softmax(dim=1)[:, None]).sum(dim=2)


def _shift_by_channel(x: torch.Tensor, radius: int, sign: int = 1, mode: str = "constant") -> torch.Tensor:
    """
    Each displacement channel d = (dy, dx) of x [M, (2r+1)^2, H, W] moved by sign * d: out(d, p) =
    x(d, p - sign * d), outside the frame zeros (``mode="constant"``) or the border repeated
    (``"replicate"``).
    """
    m, k2, h, w = x.shape
    k = 2 * radius + 1
    padded = F.pad(x, (radius,) * 4, mode=mode)
    wide = w + 2 * radius
    # one gather instead of (2r+1)^2 pads and slices: out(d, p) = padded(d, p + r - sign * d)
    d = torch.arange(-radius, radius + 1, device=x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + radius - sign * d[:, None])  # [k, H]
    cols = (torch.arange(w, device=x.device)[None, :] + radius - sign * d[:, None])  # [k, W]
    index = (rows[:, None, :, None] * wide + cols[None, :, None, :]).reshape(1, k2, h * w)
    return padded.reshape(m, k2, -1).gather(2, index.expand(m, -1, -1)).view(m, k2, h, w)


def local_scatter(source: torch.Tensor, base: torch.Tensor, logits: torch.Tensor, radius: int,
                  mean: bool = False) -> torch.Tensor:
    """
    The scattering counterpart of ``local_kernel``: each source pixel q sends the share
    softmax(logits)(q, d) of its difference from ``base`` to q + d (softmax splatting, Niklaus and
    Liu 2020), out(p) = base(p) + sum_d w(p - d, d) (source(p - d) - base(p)). What a source pixel
    holds is never lost inside the frame (a stroke keeps its ink, however the kernels vary); a
    place nothing lands on keeps ``base``; content sent outside the frame leaves it.

    :param source: [M, C, H, W]; ``base`` the same shape.
    :param logits: [M, (2r+1)^2, H, W] at the source's pixels; channel (dy + r) * (2r+1) + (dx + r)
        sends towards (y + dy, x + dx).
    :param mean: where more than one whole pixel's weight lands on a place, average what arrived
        instead of adding it: two strokes sent to one place then make one stroke, not one of twice
        the contrast (the bright specks of a plain scatter under uncertain kernels).
    :return: [M, C, H, W].
    """
    m, c, h, w = source.shape
    weights = logits.softmax(dim=1)
    k = 2 * radius + 1
    # a scatter is the transpose of an unfold: fold sums, at each place, what every source pixel
    # sent there (column q, kernel position (dy + r, dx + r) lands on q + (dy, dx); what leaves the
    # frame is dropped), in one operation instead of (2r+1)^2 shifted copies
    sent = torch.cat([weights[:, None] * source[:, :, None], weights[:, None]], dim=1)  # [M, C + 1, k^2, H, W]
    landed = F.fold(sent.reshape(m, (c + 1) * k * k, h * w), (h, w), k, padding=radius)
    moved, arrived = landed[:, :c], landed[:, c:]
    if mean:
        return base + (moved - arrived * base) / arrived.clamp(min=1.0)
    return base + moved - arrived * base


def arrivals(weights: torch.Tensor, radius: int) -> torch.Tensor:
    """
    Where a scattering copy's content came from, read at the places it landed: the share of what
    arrives at p that moved by each displacement e, w(p - e, e) normalised over e (zero where
    nothing lands).

    :param weights: [M, (2r+1)^2, H, W] at the source's pixels, summing to 1 over displacements,
        channel (ey + r) * (2r+1) + (ex + r) sending towards (y + ey, x + ex).
    :return: [M, (2r+1)^2, H, W] at the destination's pixels, indexed by the same displacement.
    """
    got = _shift_by_channel(weights, radius)
    return got / got.sum(dim=1, keepdim=True).clamp(min=1e-6)


def patch_match(frame: torch.Tensor, source: torch.Tensor, abar: torch.Tensor, radius: int, block: int = 3) -> torch.Tensor:
    """
    The log-likelihood, under the diffusion's noising, that each block x block patch of the noisy ``frame``
    is ``source``'s patch at each displacement of a (2r+1) x (2r+1) window: frame = sqrt(abar)
    source(moved) + sqrt(1 - abar) noise gives -sum over the patch of (frame - sqrt(abar)
    source(p + d))^2 / (2 (1 - abar)) (the border repeated outside the frame). Nearly clean, it
    picks the displacement sharply; under heavy noise it barely prefers one (block matching,
    weighed by how much the input can say).

    :param frame: [M, C, H, W] noisy frames; ``source`` the same shape.
    :param abar: [M] the frames' abar (the signal's share of the variance).
    :param block: the patch's side (odd): a larger one weighs more evidence for each displacement,
        so that under noise the places of one object agree on where it went.
    :return: [M, (2r+1)^2, H, W], ordered as ``local_kernel``'s logits.
    """
    h, w = frame.shape[-2:]
    half = block // 2
    k = 2 * radius + 1
    scale = abar.sqrt()[:, None, None, None]
    padded = F.pad(source, (radius,) * 4, mode="replicate")
    # displacements stacked last (a channels-last tensor once permuted): the block's box sum runs
    # about 2-3x faster over that layout on a CPU, with the same figures
    errors = torch.stack([(frame - scale * padded[..., dy:dy + h, dx:dx + w]).square().sum(dim=1)
                          for dy in range(k) for dx in range(k)], dim=-1).permute(0, 3, 1, 2)
    patch = block ** 2 * F.avg_pool2d(F.pad(errors, (half,) * 4, mode="replicate"), block, stride=1)
    return -patch / (2 * (1 - abar).clamp(min=1e-5)[:, None, None, None])


def clean_match(frame: torch.Tensor, source: torch.Tensor, radius: int, block: int) -> torch.Tensor:
    """
    ``patch_match`` of two clean frames (abar 1) as shares over displacements (a softmax): where
    each block x block patch of ``frame`` is found in ``source``, sharp where the patch is
    distinctive and spread where it is not (a flat background matches everywhere).

    :return: [M, (2r+1)^2, H, W], ordered as ``patch_match``.
    """
    ones = torch.ones(frame.shape[0], dtype=frame.dtype, device=frame.device)
    return patch_match(frame, source, ones, radius, block).softmax(dim=1)


def _next_given(given: torch.Tensor, step: torch.Tensor, frame: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """
    The flat index (video * T + frame) of the nearest given frame strictly beyond ``frame`` in the
    direction ``step`` (+1 later, -1 earlier) of each chain, -1 where there is none.

    :param given: [N, T] bool; ``step``, ``frame`` and ``video`` [M] integer tensors.
    """
    t = given.shape[1]
    frames = torch.arange(t, device=given.device)
    beyond = (frames[None] - frame[:, None]) * step[:, None] > 0  # [M, T]
    candidates = given[video] & beyond
    distance = torch.where(candidates, (frames[None] - frame[:, None]).abs(), t + 1)
    nearest = distance.argmin(dim=1)
    return torch.where(candidates.any(dim=1), video * t + nearest, -1)


# The far match reaches at most this many times the kernel's radius: a steady motion of r pixels
# per step over 7 steps (an 8-frame clip's two ends); further, its cost (a (2R+1)^2 search) grows.
FAR_REACH = 7


def far_motion(frame: torch.Tensor, later: torch.Tensor, distance: torch.Tensor, radius: int, block: int) -> torch.Tensor:
    """
    Where each pixel's content of the clean ``frame`` is found in the clean ``later`` frame,
    ``distance`` chain steps on, as shares over the per-step displacements of a (2r+1)^2 window:
    the match's displacement d (searched within min(r * distance, FAR_REACH * r)) becomes d /
    distance, split bilinearly between the whole displacements around it. The motion per step
    if it were steady; a state for ``KernelHead``'s learned map, which decides what it is worth.

    :param frame: [M, C, H, W]; ``later`` the same shape; ``distance`` [M] integers >= 2.
    :return: [M, (2r+1)^2, H, W], channel (ey + r) * (2r+1) + (ex + r) for a motion of (ey, ex).
    """
    k = 2 * radius + 1
    out = torch.zeros(frame.shape[0], k * k, *frame.shape[-2:], dtype=frame.dtype, device=frame.device)
    for span in distance.unique().tolist():
        rows = (distance == span).nonzero().flatten()
        reach = min(radius * span, FAR_REACH * radius)
        shares = clean_match(frame[rows], later[rows], reach, block)
        # the bilinear split of d / span onto whole per-step displacements along one axis, [2R+1, k]
        d = torch.arange(-reach, reach + 1, dtype=frame.dtype, device=frame.device) / span
        lo = d.floor().clamp(-radius, radius)
        frac = (d - lo).clamp(0, 1)
        hi = (lo + 1).clamp(-radius, radius)
        axis = torch.zeros(len(d), k, dtype=frame.dtype, device=frame.device)
        axis[torch.arange(len(d)), (lo + radius).long()] += 1 - frac
        axis[torch.arange(len(d)), (hi + radius).long()] += frac
        # the split is separable (rows, then columns): two small products, not one over (2R+1)^2 x k^2
        shares = shares.reshape(len(rows), len(d), len(d), *frame.shape[-2:])
        shares = torch.einsum("mabhw,ay->mybhw", shares, axis)
        out[rows] = torch.einsum("mybhw,bx->myxhw", shares, axis).reshape(len(rows), k * k, *frame.shape[-2:])
    return out


class KernelHead(nn.Module):
    """
    The x_0 of a frame made from its neighbour's: where a frame is mostly the frame next to it
    moved a little, copying pixels through a per-pixel kernel keeps their detail, where a network
    that redraws every frame must learn each shape anew. Frames are built outwards from the given
    frames (``chain_order``): the one next to a given frame from that frame's clean pixels, the
    next from the x_0 just built, and so on, so a motion of r pixels per frame reaches any
    distance. Each frame is a learned blend, m * kernel(neighbour) + (1 - m) * drawn, of the copy
    and a frame the network draws itself (for what appears, is uncovered, or cannot be copied); a
    video with no given frame grows from its own drawn frame 0.

    The kernel's logits are the network's plus a learned multiple (per pixel, >= 0, 1 untrained)
    of the log-likelihood that the frame's own noisy input is the neighbour moved by each
    displacement (``patch_match``): at low noise the input shows where each patch went and the
    kernel follows it; at high noise the likelihood is flat and the network's own logits decide.
    A comparison is a product that convolutions would otherwise have to discover, and its
    weight follows from the noise level rather than being learned for each. It assumes only that
    content moves locally between frames; the kernels, the trust in the match, the blend and the
    drawn frame are the network's.

    :param channels: C, channels of a frame.
    :param radius: r, the largest displacement a kernel reaches, in pixels per frame.
    :param block: the side of the patches the match compares (``patch_match``).
    :param copy: "gather" (each pixel a kernel-weighted mean of the neighbour around it,
        ``local_kernel``), "scatter" (each pixel of the neighbour sent where its kernel says, its
        difference from the drawn frame kept, ``local_scatter``) or "scatter_mean" (the same, what
        lands on one place averaged where more than one pixel's weight arrives).
    :param motion: also give each chain step's kernels, through a learned linear map (zero
        untrained), how the content of its neighbour moved in the step before: the neighbour's own
        kernels, or where a chain starts from two given frames side by side, their clean match. A
        recurrent motion state, as the LSTM that carries CDNA's kernels from frame to frame: what
        the motion of one step says about the next (that it persists, turns, or nothing) is learned.
    :param far: with ``motion``, a chain that starts from a lone given frame (infilling between
        given frames far apart) is given, as its state, where that frame's content is found in the
        next given frame along the chain, divided by their distance (``far_motion``): the motion
        per step if it were steady, read off the given frames, for the same learned map to weigh.
    """

    # The motion map starts at zero, and Adam moves a weight by about lr a step whatever its
    # gradient's scale: this gain (the same as a 200x lr for these weights alone) lets the map
    # reach logits of a few units within the 250 steps of the `tiny` run, where a gain of 50
    # reached about 1 and read a quarter of the motion (docs/research_log.md).
    MOTION_GAIN = 200.0

    def __init__(self, channels: int, radius: int, block: int = 7, copy: str = "gather", motion: bool = False,
                 far: bool = False):
        super().__init__()
        if radius < 1:
            raise ValueError(f"the kernel radius must be >= 1, got {radius}")
        if block < 1 or block % 2 == 0:
            raise ValueError(f"the match's block must be odd and >= 1, got {block}")
        if copy not in KERNEL_COPIES:
            raise ValueError(f"the kernel head's copy must be one of {KERNEL_COPIES}, got {copy!r}")
        if far and not motion:
            raise ValueError("the kernel head's far motion state needs motion=True (it feeds the learned map)")
        self.channels = channels
        self.radius = radius
        self.block = block
        self.copy = copy
        k2 = (2 * radius + 1) ** 2
        # a matrix, not a 1x1 convolution: a 2D weight is left alone by the channels-last conversion
        self.motion = nn.Parameter(torch.zeros(k2, k2)) if motion else None
        self.far = far

    @property
    def extra_channels(self) -> int:
        """What the network outputs beside the drawn frame: a blend logit, the match's weight and the kernel's logits."""
        return 2 + (2 * self.radius + 1) ** 2

    def forward(self, output: torch.Tensor, x: torch.Tensor, obs_mask: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """
        :param output: [N, C + extra_channels, T, H, W]: the network's drawn frames, blend logits,
            match weights (before a softplus) and kernel logits.
        :param x: [N, C, T, H, W], the network's input: given frames clean, the others noisy.
        :param obs_mask: [N, T], 1 on given frames.
        :param abar: [N] or [N, T], the input's abar (per video, or per frame).
        :return: [N, C, T, H, W] x_0; given frames hold their clean values.
        """
        n, _, t, h, w = output.shape
        c, r = self.channels, self.radius
        k = 2 * r + 1
        per_frame = output.transpose(1, 2).reshape(n * t, -1, h, w)
        drawn, blend = per_frame[:, :c], torch.sigmoid(per_frame[:, c:c + 1])
        trust, logits = F.softplus(per_frame[:, c + 1:c + 2] + 0.5413), per_frame[:, c + 2:]  # trust 1 untrained
        abar = (abar[:, None].expand(n, t) if abar.ndim == 1 else abar).reshape(-1).to(output.dtype)
        distance, source = chain_order(obs_mask)
        frame = torch.arange(t, device=x.device).expand(n, t).reshape(-1)
        given = (obs_mask > 0).reshape(-1)
        frames_in = x.transpose(1, 2).reshape(n * t, c, h, w)
        x0 = torch.where(given[:, None, None, None], frames_in, drawn)
        source = source.reshape(-1) + (torch.arange(n, device=x.device)[:, None] * t).expand(n, t).reshape(-1)
        distance = distance.reshape(-1)
        # with ``motion``: how the content at each pixel of a built frame moved in the step that built it
        moved = torch.zeros(n * t, k * k, h, w, dtype=output.dtype, device=x.device) if self.motion is not None else None
        for step in range(1, t):
            built = (distance == step).nonzero().flatten()
            if not len(built):
                break
            neighbour = x0[source[built]]
            with torch.no_grad():  # a feature of the inputs: no gradient flows through the comparison
                match = patch_match(frames_in[built], neighbour, abar[built], r, self.block)
                if self.copy != "gather":  # the match scored "output p came from p + d"; q asks "q went to q + d"
                    match = _shift_by_channel(match.flip(1), r, -1, "replicate")
            total = logits[built] + trust[built] * match
            if self.motion is not None:
                total = total + self.MOTION_GAIN * torch.einsum(
                    "ij,mjhw->mihw", self.motion, self._motion_before(built, source, frame, given, frames_in, x0, moved, t))
            if self.copy == "gather":
                copied = local_kernel(neighbour, total, r)
            else:
                copied = local_scatter(neighbour, drawn[built], total, r, mean=self.copy == "scatter_mean")
            if self.motion is not None:  # what this step did, for the next one (its values, not its gradient)
                weights = total.detach().softmax(dim=1)
                moved = moved.index_put((built,), weights.flip(1) if self.copy == "gather" else arrivals(weights, r))
            x0 = x0.index_put((built,), blend[built] * copied + (1 - blend[built]) * drawn[built])
        return x0.reshape(n, t, c, h, w).transpose(1, 2)

    def _motion_before(self, built, source, frame, given, frames_in, x0, moved, t):
        """
        The motion state the kernels of ``built`` (frames made from ``source[built]``) are given:
        how the content of that neighbour moved in the chain step before, as shares over
        displacements at the pixels the map reads (the neighbour's for a scatter; for a gather,
        the output's, where that content lands): the state stored when the neighbour was built,
        or, where the neighbour and the frame before it are both given, their clean match; zeros
        where neither is known (a chain from a lone given frame, or a video's drawn frame 0).
        """
        r = self.radius
        src = source[built]
        step = frame[built] - frame[src]  # +1 forwards in time, -1 backwards
        inside = (frame[src] - step >= 0) & (frame[src] - step < t)
        before = torch.where(inside, src - step, src)
        known = inside & ((source[src] == before) & ~given[src] | given[src] & given[before])
        state = moved[src].clone()
        pair = (known & given[src]).nonzero().flatten()
        if len(pair):
            with torch.no_grad():  # clean frames: the match is sharp
                state[pair] = clean_match(frames_in[src[pair]], x0[before[pair]], r, self.block).flip(1)
        state = state * known[:, None, None, None]
        if self.far:
            ahead = _next_given(given.reshape(-1, t), step, frame[src], src // t)
            lone = (~known & given[src] & (ahead >= 0)).nonzero().flatten()
            if len(lone):
                with torch.no_grad():
                    state[lone] = far_motion(frames_in[src[lone]], frames_in[ahead[lone]],
                                             (frame[ahead[lone]] - frame[src[lone]]).abs(), r, self.block)
        return arrivals(state, r) if self.copy == "gather" else state


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
        # in_layers = (norm, SiLU, conv) and out_layers = (SiLU, dropout, conv) are applied by hand so
        # that each norm -> (FiLM) -> SiLU chain keeps only its input for backward (``nn.norm_act``)
        h = self.in_layers[2](norm_act(self.in_layers[0], x))
        emb_out = self.emb_layers(emb).type(h.dtype)
        # [N, E]: one level per video; [N, T, E]: one per frame (frames are never downsampled)
        emb_out = emb_out[:, :, None, None, None] if emb_out.ndim == 2 else emb_out.transpose(1, 2)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm_act(self.out_norm, h, scale, shift)
        else:
            h = norm_act(self.out_norm, h + emb_out)
        return self.skip(x) + self.out_layers[2](self.out_layers[1](h))


POSITIONS = ("none", "rope")
# Rotary frequencies: base**(-2i/d) for i < d/2. Grids here are 4-32 cells and 8-20 frames, so a
# base of 100 (rather than language models' 10000) keeps every rotated pair turning within them.
ROPE_BASE = 100.0


def rotary_tables(sizes, head_dim: int, device, dtype):
    """
    cos and sin [L, head_dim] for tokens on a grid of ``sizes`` (row-major, as the attention
    flattens them): the head's channels are split into one block of pairs per axis, each pair
    rotated by its axis coordinate times its frequency; channels left over stay unrotated.
    """
    per_axis = (head_dim // (2 * len(sizes))) * 2
    if per_axis == 0:
        raise ValueError(f"rotary positions need at least {2 * len(sizes)} channels per head, got {head_dim}")
    grids = torch.meshgrid(*[torch.arange(n, device=device, dtype=torch.float32) for n in sizes], indexing="ij")
    inv_freq = ROPE_BASE ** (-torch.arange(0, per_axis, 2, device=device, dtype=torch.float32) / per_axis)
    angles = torch.cat([g.reshape(-1, 1) * inv_freq for g in grids], dim=1)  # [L, head_dim_rotated / 2]
    angles = angles.repeat_interleave(2, dim=1)
    rest = head_dim - angles.shape[1]
    cos = torch.cat([angles.cos(), torch.ones(angles.shape[0], rest, device=device)], dim=1)
    sin = torch.cat([angles.sin(), torch.zeros(angles.shape[0], rest, device=device)], dim=1)
    return cos.to(dtype), sin.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) of x [..., L, D]: each channel pair (2i, 2i+1) turned."""
    pairs = x.unflatten(-1, (-1, 2))
    swapped = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos + swapped * sin


def _heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """The number of heads (``num_head_channels`` wins when set), checked to divide the channels."""
    if num_head_channels != -1:
        if channels % num_head_channels:
            raise ValueError(f"--num_head_channels {num_head_channels} does not divide {channels} channels")
        num_heads = channels // num_head_channels
    if channels % num_heads:
        raise ValueError(f"--num_heads {num_heads} does not divide {channels} channels")
    return num_heads


class _Residual(nn.Module):
    """x + f(x) through ``_forward``, recomputed in backward under ``use_checkpoint``."""

    def forward(self, x):
        if self.use_checkpoint and self.training:
            return grad_checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class AttentionBlock(_Residual):
    """
    Multi-head self-attention over one axis group of a [N, C, T, H, W] tensor, through
    ``scaled_dot_product_attention`` (flash / memory-efficient kernels where available).

    ``axes`` picks the tokens: "space" attends within each frame (H*W tokens),
    "time" attends across frames at each pixel (T tokens), "spacetime" attends over all
    T*H*W positions (RaMViD's full attention; quadratic in the video size).

    ``position`` "none" leaves attention without positions (permuting the tokens permutes the
    output); "rope" rotates queries and keys by their coordinates on each of its axes (axial
    rotary embedding), so a score depends on the tokens' offset in time and space, e.g. "the
    same place, one frame on".
    """

    def __init__(self, channels, axes, num_heads=1, num_head_channels=-1, use_checkpoint=False, norm="group",
                 position="none"):
        super().__init__()
        num_heads = _heads(channels, num_heads, num_head_channels)
        if position not in POSITIONS:
            raise ValueError(f"attention position must be one of {POSITIONS}, got {position!r}")
        self.axes = axes
        self.position = position
        self.num_heads = num_heads
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels, norm)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv3d(channels, channels, 1))

    def _forward(self, x):
        n, c, t, h, w = x.shape
        heads, dh = self.num_heads, c // self.num_heads
        qkv = self.qkv(norm_act(self.norm, x, act=False)).reshape(n, 3, heads, dh, t, h, w)
        if self.axes == "space":  # tokens: h*w, batch: n*t
            qkv = qkv.permute(1, 0, 4, 2, 5, 6, 3).reshape(3, n * t, heads, h * w, dh)
        elif self.axes == "time":  # tokens: t, batch: n*h*w
            qkv = qkv.permute(1, 0, 5, 6, 2, 4, 3).reshape(3, n * h * w, heads, t, dh)
        else:  # tokens: t*h*w, batch: n
            qkv = qkv.permute(1, 0, 2, 4, 5, 6, 3).reshape(3, n, heads, t * h * w, dh)
        # the fused kernels (flash, memory-efficient; CPU's flash) need each head's channels adjacent in
        # memory; otherwise SDPA falls back to the math path, which keeps every L x L score matrix in
        # float32 for backward. In channels_last_3d this is already so (no copy); else one copy.
        qkv = qkv.contiguous()
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.position == "rope":
            sizes = {"space": (h, w), "time": (t,), "spacetime": (t, h, w)}[self.axes]
            cos, sin = rotary_tables(sizes, dh, x.device, q.dtype)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v)
        if self.axes == "space":
            out = out.reshape(n, t, heads, h, w, dh).permute(0, 2, 5, 1, 3, 4)
        elif self.axes == "time":
            out = out.reshape(n, h, w, heads, t, dh).permute(0, 3, 5, 4, 1, 2)
        else:
            out = out.reshape(n, heads, t, h, w, dh).permute(0, 1, 5, 2, 3, 4)
        return x + self.proj_out(out.reshape(n, c, t, h, w))


def attention(channels, attention_type, num_heads, num_head_channels, use_checkpoint, norm="group",
              position="none") -> nn.Module:
    """Factorized space-then-time attention, or one full space-time attention."""
    if attention_type == "full":
        return AttentionBlock(channels, "spacetime", num_heads, num_head_channels, use_checkpoint, norm, position)
    if attention_type != "factorized":
        raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
    return nn.Sequential(
        AttentionBlock(channels, "space", num_heads, num_head_channels, use_checkpoint, norm, position),
        AttentionBlock(channels, "time", num_heads, num_head_channels, use_checkpoint, norm, position),
    )
