"""
A model-free predictor that knows what the embedded digits are: objects on a black
background, each moving at a constant whole-pixel velocity and reflecting off the borders.

The ink of a given frame is split into objects (8-connected ink, split again where its
pixels' own block-matching velocities disagree and no one velocity explains the region: two
digits that touch), each object gets the velocity that best explains it in the other given
frames (its motion simulated between them with the reflections; on a tie the slower), and
every frame to generate draws each object moved on from its nearest given frame, the brighter
value where two overlap (as the generator draws them). An object's extent is its ink box,
which is the glyph box the generator reflects (its glyphs are cropped to their ink).
Touching digits that move alike stay one object, overlapping ones hide ink, and a bounce in
the frames between two given frames can be read the wrong way; with one given frame the
velocity is open and it copies.

It is an evaluation baseline, never part of the model: what knowing the objects and the
borders is worth on this data, beside the copy-last and black-frame baselines and the
perfect model (``scripts/digits_ceiling.py`` prints all four on the same held-out videos).
"""

from typing import List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.synthetic import reflect_step


def move(pos: np.ndarray, vel: np.ndarray, limit: np.ndarray, frames: int) -> np.ndarray:
    """Where a corner at ``pos`` with velocity ``vel`` is ``frames`` frames later (earlier when negative)."""
    vel = vel if frames >= 0 else -vel
    for _ in range(abs(frames)):
        pos, vel = reflect_step(pos, vel, limit)
    return pos


def _box_mean(maps: np.ndarray, size: int) -> np.ndarray:
    """Mean over a ``size`` x ``size`` window of each map [..., H, W], over the part inside the frame."""
    x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    shape = x.shape
    out = F.avg_pool2d(x.reshape(-1, 1, *shape[-2:]), size, stride=1, padding=size // 2, count_include_pad=False)
    return out.reshape(shape).numpy()


def _shift(frame: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``frame`` [H, W, C] moved by (dy, dx) whole pixels, black where nothing moves in."""
    h, w = frame.shape[:2]
    out = np.zeros_like(frame)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = frame[max(-dy, 0):h + min(-dy, 0),
                                                                       max(-dx, 0):w + min(-dx, 0)]
    return out


def connected_ink(ink: np.ndarray) -> np.ndarray:
    """Labels [H, W] of the 8-connected regions of a boolean map (0 = background, 1.. = regions)."""
    h, w = ink.shape
    label = np.where(ink, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:  # every region takes its largest pixel index, spread one neighbour per pass
        padded = np.pad(label, 1)
        grown = np.max([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
        grown = np.where(ink, grown, 0)
        if (grown == label).all():
            break
        label = grown
    _, label = np.unique(label, return_inverse=True)  # 0 stays 0: it is the smallest value
    return label.reshape(h, w)


def _box(mask: np.ndarray):
    """The top-left corner and the size (each int64 [2]) of the box around ``mask``'s pixels."""
    ys, xs = np.nonzero(mask)
    corner = np.array([ys.min(), xs.min()])
    return corner, np.array([ys.max() + 1, xs.max() + 1]) - corner


def fit(frames: np.ndarray, s: int, others: Sequence[int], mask: np.ndarray, radius: int):
    """
    The velocity that best explains an object of the given frame ``s`` in the other given
    frames, its motion simulated between them with the reflections off the borders.

    :param frames: [T, H, W, C] float, or a dict frame index -> [H, W, C] (only ``s`` and
        ``others`` are read).
    :param others: the other given frames to explain (at least one).
    :param mask: [H, W] bool, the object's pixels in frame ``s``.
    :return: (velocity int64 [2], its mean squared error over the object's pixels, summed over
        ``others``). On a tie the slowest wins: a bounce between two frames can explain them
        as well as no bounce (a digit 20 -> 19 rows moved by -1, or by +3 off a border at 21),
        and the generator's prior puts more mass on a slower velocity (uniform speed, so the
        density falls as 1 / speed).
    """
    corner, size = _box(mask)
    limit = np.array(mask.shape) - size
    inside = mask[corner[0]:corner[0] + size[0], corner[1]:corner[1] + size[1]]
    patch = frames[s][corner[0]:corner[0] + size[0], corner[1]:corner[1] + size[1]][inside]
    best, velocity = np.inf, np.zeros(2, dtype=np.int64)
    for v in _BY_SPEED[radius]:
        cost = 0.0
        for g in others:
            y, x = move(corner, v, limit, g - s)
            cost += float(((frames[g][y:y + size[0], x:x + size[1]][inside] - patch) ** 2).mean())
        if cost < best - 1e-6:
            best, velocity = cost, v
    return velocity, best


class _Candidates(dict):
    """radius -> the whole-pixel velocities with both components within it, slowest first."""
    def __missing__(self, radius):
        r = range(-radius, radius + 1)
        self[radius] = sorted((np.array([vy, vx]) for vy in r for vx in r), key=lambda v: (v @ v, tuple(v)))
        return self[radius]


_BY_SPEED = _Candidates()


def segment(frame: np.ndarray, partner: np.ndarray, lag: int, radius: int) -> List[np.ndarray]:
    """
    The objects of ``frame``: boolean masks [H, W], one per object.

    :param frame: [H, W, C] float, the given frame to split.
    :param partner: [H, W, C] float, another given frame, ``lag`` frames before ``frame``
        (after it when negative); None to split by connectivity alone.
    :param radius: the largest velocity component, in pixels per frame.
    """
    regions = connected_ink(frame.max(axis=-1) > 0)
    if partner is None:
        return [regions == r for r in range(1, regions.max() + 1)]
    # the velocities present: each pixel's best over its 9 x 9 patch (one pixel's colour is matched
    # by many wrong velocities, a patch's rarely)
    velocities = [(vy, vx) for vy in range(-radius, radius + 1) for vx in range(-radius, radius + 1)]
    costs = np.stack([((frame - _shift(partner, lag * vy, lag * vx)) ** 2).mean(axis=-1) for vy, vx in velocities])
    pooled = _box_mean(costs, 9)
    own = pooled.argmin(axis=0)
    objects = []
    for r in range(1, regions.max() + 1):
        region = regions == r
        values, counts = np.unique(own[region], return_counts=True)
        major = values[counts >= 0.2 * region.sum()]  # a velocity held by a fifth of the region is an object
        # one velocity that explains the whole region exactly keeps it one object: the pixels' own
        # velocities can disagree without two objects (a straight stroke matches many shifts of itself)
        if len(major) <= 1 or fit({0: frame, -lag: partner}, 0, [-lag], region, radius)[1] < 1e-6:
            objects.append(region)
            continue
        # two objects touch: each pixel joins the one whose velocity explains the pixel itself best
        # (near the seam a 9 x 9 patch sees both); the patch cost only breaks ties (cost units are
        # squared grey levels, so a pixel's own mismatch is >= 1/3 and the patch term stays below it)
        which = (costs[major][:, region] + 1e-6 * pooled[major][:, region]).argmin(axis=0)
        ys, xs = np.nonzero(region)
        for k in range(len(major)):
            mask = np.zeros_like(region)
            mask[ys[which == k], xs[which == k]] = True
            if mask.any():
                objects.append(mask)
    return objects


def _displacement(mask: np.ndarray, velocity: np.ndarray, frames: int) -> np.ndarray:
    """How far the object ``mask`` has moved ``frames`` frames on (int64 [2]): the box moves whole."""
    corner, size = _box(mask)
    return move(corner, velocity, np.array(mask.shape) - size, frames) - corner


def _draw(canvas: np.ndarray, frame: np.ndarray, mask: np.ndarray, velocity: np.ndarray, frames: int):
    """Draws the object ``mask`` of ``frame`` onto ``canvas`` [H, W, C] moved on by ``frames``
    frames at ``velocity`` (the brighter value where objects overlap, as the generator draws them)."""
    corner, size = _box(mask)
    y, x = move(corner, velocity, np.array(frame.shape[:2]) - size, frames)
    patch = np.where(mask[..., None], frame, 0)[corner[0]:corner[0] + size[0], corner[1]:corner[1] + size[1]]
    region = canvas[y:y + size[0], x:x + size[1]]
    np.maximum(region, patch, out=region)


def track(video: np.ndarray, given: Sequence[int], radius: int = 3) -> np.ndarray:
    """
    Every frame of ``video`` predicted from its given frames alone.

    :param video: uint8 [T, H, W, C]; only the frames in ``given`` are read.
    :param given: indices of the given frames (at least one).
    :param radius: the largest velocity component tried, in pixels per frame.
    :return: uint8 [T, H, W, C], the given frames as they are.
    """
    if video.ndim != 4 or video.dtype != np.uint8:
        raise ValueError(f"the object tracker takes a uint8 video [T, H, W, C], got {video.dtype} of shape {video.shape}")
    t = video.shape[0]
    given = sorted(int(g) for g in given)
    if not given:
        raise ValueError("the object tracker needs at least one given frame")
    if given[0] < 0 or given[-1] >= t:
        raise ValueError(f"given frames {given} are not all in the video's {t} frames")
    frames = video.astype(np.float32)
    out = np.zeros_like(frames)
    # each frame's nearest given frame (the earlier one on a tie), and each source's nearest other given frame
    source = {f: min(given, key=lambda g: (abs(g - f), g)) for f in range(t) if f not in given}
    for s in sorted(set(source.values())):
        others = [g for g in given if g != s]
        partner = min(others, key=lambda g: (abs(g - s), g)) if others else None
        objects = segment(frames[s], None if partner is None else frames[partner], 0 if partner is None else s - partner,
                          radius)
        for mask in objects:
            velocity = np.zeros(2, dtype=np.int64) if partner is None else fit(frames, s, others, mask, radius)[0]
            for f in (f for f, src in source.items() if src == s):
                _draw(out[f], frames[s], mask, velocity, f - s)
    out[given] = frames[given]
    return np.round(out).astype(np.uint8)
