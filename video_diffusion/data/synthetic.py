"""
The embedded default dataset: moving digits, generated on the fly.

Each video has one or two digits drawn with Pillow's built-in scalable font, moving at
constant velocity and bouncing off the borders. Video i is a pure function of
(seed, i), so every rank, worker and resumed run sees the same data without a file.

Motion is on the pixel grid, as in Stochastic Moving MNIST: a digit starts at a whole-pixel
corner and moves by a whole number of pixels per frame in each direction, reflecting off
the borders. So two consecutive frames of a digit determine all of its motion (the bounce
is deterministic too); only occlusions, where two digits overlap, hide anything. One frame
leaves the velocity open, and generation leaves everything open: those tasks stay stochastic.
"""

from functools import cached_property
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


# Speed of a digit, in frame sizes per frame.
SPEED = (0.04, 0.1)


def reflect_step(pos: np.ndarray, vel: np.ndarray, limit: np.ndarray):
    """
    One frame of a digit's motion: ``pos + vel`` reflected off the borders into [0, limit] per
    axis (a position is below 0 or above the limit, never both), the velocity flipped on the axes
    that reflected. Stepping with the velocity negated runs the motion backwards.

    :param pos: [..., 2] top-left corners; ``vel`` [..., 2] whole pixels per frame.
    :param limit: [2] the largest corner that keeps the glyph inside.
    :return: (pos, vel) one frame later.
    """
    pos = pos + vel
    low, high = pos < 0, pos > limit
    pos = np.where(low, -pos, np.where(high, 2 * limit - pos, pos))
    vel = np.where(low | high, -vel, vel)
    return np.clip(pos, 0, limit), vel


class Digit(NamedTuple):
    glyph: np.ndarray  # [h, w] in [0, 1]
    colour: np.ndarray  # [C] in [0.4, 1] (ones for grayscale)
    pos: np.ndarray  # top-left corner (y, x) in the first frame, whole pixels
    vel: np.ndarray  # (dy, dx) in whole pixels per frame


def draw_motion(rng: np.random.Generator, limits, image_size: int, size=None, still: bool = False):
    """
    Whole-pixel start corners and velocities from the generator's prior: the corner uniform
    over the positions that keep the glyph inside the frame, the speed uniform in ``SPEED``
    (frame sizes per frame) in a uniform direction, each component rounded to whole pixels;
    a velocity that rounds to (0, 0) moves one pixel along its larger component instead.

    :param limits: (y, x) largest corner that keeps the glyph inside.
    :param size: None for one motion, or the number of motions to draw at once.
    :param still: every velocity (0, 0) (a test option: the exact answer is a given frame).
    :return: (pos, vel) int64 arrays [2] or [size, 2].
    """
    shape = () if size is None else (size,)
    pos = rng.integers(0, np.asarray(limits) + 1, size=(*shape, 2))
    angle = rng.uniform(0, 2 * np.pi, size=shape)
    speed = rng.uniform(*SPEED, size=shape) * image_size
    direction = np.stack([np.sin(angle), np.cos(angle)], axis=-1)
    vel = np.round(speed[..., None] * direction).astype(np.int64)
    zero = (vel == 0).all(axis=-1)
    larger = np.abs(direction).argmax(axis=-1)
    unit = np.where(np.arange(2) == larger[..., None], np.sign(direction), 0).astype(np.int64)
    vel = np.where(zero[..., None], unit, vel)
    if still:
        vel = np.zeros_like(vel)
    return pos.astype(np.int64), vel


class MovingDigits(torch.utils.data.Dataset):
    """
    :param image_size: frame height and width.
    :param seq_len: frames per video.
    :param channels: 3 (each digit a random bright colour) or 1 (white digits).
    :param num_videos: dataset length (videos are generated, so this is only the epoch size).
    :param seed: data seed; the same seed gives the same videos.
    :param still: digits do not move (a test option: copying a given frame is then exact).
    """

    def __init__(self, image_size: int, seq_len: int, channels: int = 3, num_videos: int = 100_000, seed: int = 0,
                 still: bool = False):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 for moving digits, got {image_size}")
        self.image_size, self.seq_len, self.channels = image_size, seq_len, channels
        self.num_videos, self.seed, self.still = num_videos, seed, still

    def __len__(self):
        return self.num_videos

    def fingerprint(self) -> dict:
        """What identifies the data: the generator's parameters (the videos are a function of them)."""
        # "motion" names the generator's version: "pixel" (whole-pixel corners and velocities)
        # replaced continuous motion rounded to pixels, so a run trained on the old videos
        # is told on resume that its data changed; "glyphs": "ink" replaced glyphs in the
        # font's box (blank columns beside the ink, which moved the bounces off the visible ink).
        out = {"source": "moving-digits", "motion": "pixel", "glyphs": "ink", "image_size": self.image_size,
               "seq_len": self.seq_len, "channels": self.channels, "videos": self.num_videos, "seed": self.seed}
        if self.still:
            out["still"] = True
        return out

    @cached_property
    def glyphs(self):
        """The ten digits as [h, w] float arrays in [0, 1], cropped to their ink, about half a frame tall."""
        font = ImageFont.load_default(size=max(6, int(self.image_size * 0.55)))
        out = []
        for digit in "0123456789":
            left, top, right, bottom = font.getbbox(digit)
            img = Image.new("L", (right - left, bottom - top))
            ImageDraw.Draw(img).text((-left, -top), digit, fill=255, font=font)
            glyph = np.asarray(img, dtype=np.float32) / 255.0
            # The font's box holds the advance width (a "1" has 2-3 blank columns each side):
            # cropped to the ink, a digit bounces when its ink touches the border, so what the
            # frames show determines the bounce.
            rows, cols = np.flatnonzero(glyph.any(axis=1)), np.flatnonzero(glyph.any(axis=0))
            out.append(glyph[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
        return out

    def scene(self, index: int) -> List[Digit]:
        """The latent state of video ``index``: each digit's glyph, colour, first position and velocity."""
        if not 0 <= index < self.num_videos:
            raise IndexError(f"video index {index} out of range [0, {self.num_videos})")
        rng = np.random.default_rng([self.seed, index])
        s = self.image_size
        digits = []
        for _ in range(rng.integers(1, 3)):
            glyph = self.glyphs[rng.integers(10)]
            gh, gw = glyph.shape
            colour = rng.uniform(0.4, 1.0, size=self.channels) if self.channels == 3 else np.ones(1)
            pos, vel = draw_motion(rng, self.limits(glyph), s, still=self.still)
            digits.append(Digit(glyph, colour, pos, vel))
        return digits

    def limits(self, glyph: np.ndarray) -> Tuple[int, int]:
        """The largest top-left corner (y, x) that keeps ``glyph`` inside the frame."""
        return self.image_size - glyph.shape[0], self.image_size - glyph.shape[1]

    def corners(self, digit: Digit, num_frames: int) -> np.ndarray:
        """
        Top-left corners [..., num_frames, 2] of a digit moving from its position, bouncing
        off the borders; all whole pixels. ``digit.pos`` and ``digit.vel`` may be batches
        [..., 2] (many candidate motions of one glyph at once).
        """
        limits = np.array(self.limits(digit.glyph), dtype=np.int64)
        pos, vel = np.array(digit.pos, dtype=np.int64), np.array(digit.vel, dtype=np.int64)
        out = np.zeros((*pos.shape[:-1], num_frames, 2), dtype=np.int64)
        for f in range(num_frames):
            out[..., f, :] = pos
            pos, vel = reflect_step(pos, vel, limits)
        return out

    def render(self, digits: Sequence[Digit], corners: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 [T, H, W, C]: each digit drawn at its corners (overlaps keep the brighter value)."""
        s = self.image_size
        video = np.zeros((len(corners[0]), s, s, self.channels), dtype=np.float32)
        for digit, where in zip(digits, corners):
            gh, gw = digit.glyph.shape
            for f, (y, x) in enumerate(where):
                patch = video[f, y:y + gh, x:x + gw]
                np.maximum(patch, digit.glyph[:, :, None] * digit.colour, out=patch)
        return np.round(video * 255).astype(np.uint8)

    def frames(self, index: int) -> np.ndarray:
        """Video ``index`` as uint8 [T, H, W, C]."""
        digits = self.scene(index)
        return self.render(digits, [self.corners(d, self.seq_len) for d in digits])

    def __getitem__(self, key):
        """``key`` is an index, or (index, seed) from the training sampler (the seed is not needed here)."""
        index = key[0] if isinstance(key, tuple) else key
        frames = torch.from_numpy(self.frames(int(index)))
        return {"video": frames.permute(3, 0, 1, 2).float() / 127.5 - 1.0, "index": int(index)}
