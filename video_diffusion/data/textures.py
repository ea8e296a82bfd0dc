"""
The second embedded dataset: textured shapes moving over a textured background, generated
on the fly (``--dataset textures``).

Where the moving digits are flat colours on black (a tracker that takes any non-zero pixel
as an object solves them), here nothing is black and nothing is flat: each video has a
background of smooth colour noise, larger than the frame, drifting slowly (one pixel every
second or third frame, or still), and one to three shapes, each a random blob outline (a
circle whose radius varies smoothly with the angle) filled with its own smooth colour noise,
moving at a constant whole-pixel velocity and reflecting off the borders. Shapes are drawn in
a fixed order, so a later shape hides an earlier one where they overlap.

Video i is a pure function of (seed, i), as for the digits. Given two frames, a shape's motion
is determined on the pixel grid (up to occlusions and a bounce between the frames); its texture
is not a function of anything a model has seen, so only the given frames can tell it.
"""

from typing import List, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .synthetic import reflect_step


class Shape(NamedTuple):
    mask: np.ndarray  # bool [h, w]
    fill: np.ndarray  # float [h, w, C] in [0, 1]
    pos: np.ndarray  # top-left corner (y, x) in the first frame, whole pixels
    vel: np.ndarray  # (dy, dx) whole pixels per frame


def smooth_noise(rng: np.random.Generator, h: int, w: int, channels: int, cell: int) -> np.ndarray:
    """
    Smooth colour noise [h, w, C] in [0, 1]: uniform values on a coarse grid of ``cell``-pixel
    cells, upsampled bicubically, then stretched to fill [0, 1] per channel.
    """
    gh, gw = -(-h // cell) + 3, -(-w // cell) + 3
    coarse = torch.from_numpy(rng.uniform(0, 1, size=(1, channels, gh, gw)).astype(np.float32))
    fine = F.interpolate(coarse, size=(gh * cell, gw * cell), mode="bicubic", align_corners=False)[0]
    fine = fine[:, cell:cell + h, cell:cell + w].permute(1, 2, 0).numpy()
    low, high = fine.min(axis=(0, 1)), fine.max(axis=(0, 1))
    return (fine - low) / np.maximum(high - low, 1e-6)


def blob(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random filled outline in a ``size`` x ``size`` box: a radius that varies smoothly with the angle."""
    yy, xx = np.mgrid[:size, :size] + 0.5 - size / 2
    angle, dist = np.arctan2(yy, xx), np.hypot(yy, xx)
    radius = np.full_like(angle, 1.0)
    for k in (2, 3, 5):  # a few low harmonics: smooth, star-, bean- or egg-shaped outlines
        radius += rng.uniform(0, 0.35 / k * 2) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    radius *= size / 2 / radius.max()
    mask = dist <= radius
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


class MovingTextures(torch.utils.data.Dataset):
    """
    :param image_size: frame height and width (at least 16).
    :param seq_len: frames per video.
    :param channels: 3 (colour textures) or 1 (grey).
    :param num_videos: dataset length (videos are generated, so this is only the epoch size).
    :param seed: data seed; the same seed gives the same videos.
    """

    def __init__(self, image_size: int, seq_len: int, channels: int = 3, num_videos: int = 100_000, seed: int = 0):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16 for moving textures, got {image_size}")
        self.image_size, self.seq_len, self.channels = image_size, seq_len, channels
        self.num_videos, self.seed = num_videos, seed

    def __len__(self):
        return self.num_videos

    def fingerprint(self) -> dict:
        """What identifies the data: the generator's parameters (the videos are a function of them)."""
        return {"source": "moving-textures", "version": 1, "image_size": self.image_size, "seq_len": self.seq_len,
                "channels": self.channels, "videos": self.num_videos, "seed": self.seed}

    def scene(self, index: int):
        """The latent state of video ``index``: (background texture, its drift per frame, shapes)."""
        if not 0 <= index < self.num_videos:
            raise IndexError(f"video index {index} out of range [0, {self.num_videos})")
        rng = np.random.default_rng([self.seed, index])
        s, c = self.image_size, self.channels
        margin = self.seq_len  # the background drifts at most half a pixel per frame
        background = 0.15 + 0.5 * smooth_noise(rng, s + 2 * margin, s + 2 * margin, c, cell=max(4, s // 4))
        drift = rng.choice([-0.5, -1 / 3, 0.0, 1 / 3, 0.5], size=2)
        shapes: List[Shape] = []
        for _ in range(rng.integers(1, 4)):
            mask = blob(rng, int(rng.integers(s // 4, s // 2 + 1)))
            fill = 0.3 + 0.7 * smooth_noise(rng, *mask.shape, c, cell=max(2, s // 8))
            limit = np.array([s - mask.shape[0], s - mask.shape[1]])
            pos = np.array([rng.integers(0, limit[0] + 1), rng.integers(0, limit[1] + 1)])
            vel = rng.integers(-2, 3, size=2)
            if not vel.any():
                vel[rng.integers(2)] = rng.choice([-1, 1])
            shapes.append(Shape(mask, fill, pos, vel))
        return background, drift, shapes

    def frames(self, index: int) -> np.ndarray:
        """Video ``index`` as uint8 [T, H, W, C]."""
        background, drift, shapes = self.scene(index)
        s, margin = self.image_size, self.seq_len
        video = np.zeros((self.seq_len, s, s, self.channels), dtype=np.float32)
        corners = []
        for shape in shapes:
            pos, vel, where = shape.pos, shape.vel, []
            limit = np.array([s - shape.mask.shape[0], s - shape.mask.shape[1]])
            for _ in range(self.seq_len):
                where.append(pos)
                pos, vel = reflect_step(pos, vel, limit)
            corners.append(where)
        for f in range(self.seq_len):
            dy, dx = (np.floor(drift * f) + margin).astype(int)
            video[f] = background[dy:dy + s, dx:dx + s]
            for shape, where in zip(shapes, corners):
                y, x = where[f]
                h, w = shape.mask.shape
                region = video[f, y:y + h, x:x + w]
                region[shape.mask] = shape.fill[shape.mask]
        return np.round(video * 255).astype(np.uint8)

    def __getitem__(self, key):
        """``key`` is an index, or (index, seed) from the training sampler (the seed is not needed here)."""
        index = key[0] if isinstance(key, tuple) else key
        frames = torch.from_numpy(self.frames(int(index)))
        return {"video": frames.permute(3, 0, 1, 2).float() / 127.5 - 1.0, "index": int(index)}
