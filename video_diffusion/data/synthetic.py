"""
The embedded default dataset: moving digits, generated on the fly.

Each video has one or two digits drawn with Pillow's built-in scalable font, moving at
constant velocity and bouncing off the borders. Video i is a pure function of
(seed, i), so every rank, worker and resumed run sees the same data without a file.
"""

from functools import cached_property

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


class MovingDigits(torch.utils.data.Dataset):
    """
    :param image_size: frame height and width.
    :param seq_len: frames per video.
    :param channels: 3 (each digit a random bright colour) or 1 (white digits).
    :param num_videos: dataset length (videos are generated, so this is only the epoch size).
    :param seed: data seed; the same seed gives the same videos.
    """

    def __init__(self, image_size: int, seq_len: int, channels: int = 3, num_videos: int = 100_000, seed: int = 0):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 for moving digits, got {image_size}")
        self.image_size, self.seq_len, self.channels = image_size, seq_len, channels
        self.num_videos, self.seed = num_videos, seed

    def __len__(self):
        return self.num_videos

    def fingerprint(self) -> dict:
        """What identifies the data: the generator's parameters (the videos are a function of them)."""
        return {"source": "moving-digits", "image_size": self.image_size, "seq_len": self.seq_len,
                "channels": self.channels, "videos": self.num_videos, "seed": self.seed}

    @cached_property
    def glyphs(self):
        """The ten digits as [h, w] float arrays in [0, 1], tightly cropped, about half a frame tall."""
        font = ImageFont.load_default(size=max(6, int(self.image_size * 0.55)))
        out = []
        for digit in "0123456789":
            left, top, right, bottom = font.getbbox(digit)
            img = Image.new("L", (right - left, bottom - top))
            ImageDraw.Draw(img).text((-left, -top), digit, fill=255, font=font)
            out.append(np.asarray(img, dtype=np.float32) / 255.0)
        return out

    def frames(self, index: int) -> np.ndarray:
        """Video ``index`` as uint8 [T, H, W, C]."""
        if not 0 <= index < self.num_videos:
            raise IndexError(f"video index {index} out of range [0, {self.num_videos})")
        rng = np.random.default_rng([self.seed, index])
        s, t = self.image_size, self.seq_len
        video = np.zeros((t, s, s, self.channels), dtype=np.float32)
        for _ in range(rng.integers(1, 3)):
            glyph = self.glyphs[rng.integers(10)]
            gh, gw = glyph.shape
            colour = rng.uniform(0.4, 1.0, size=self.channels) if self.channels == 3 else np.ones(1)
            pos = rng.uniform(0, [s - gh, s - gw])
            angle = rng.uniform(0, 2 * np.pi)
            vel = rng.uniform(0.04, 0.1) * s * np.array([np.sin(angle), np.cos(angle)])
            for f in range(t):
                y, x = np.round(pos).astype(int)
                patch = video[f, y:y + gh, x:x + gw]
                np.maximum(patch, glyph[:, :, None] * colour, out=patch)
                pos = pos + vel
                for axis, limit in enumerate((s - gh, s - gw)):  # reflect off the borders
                    if pos[axis] < 0:
                        pos[axis], vel[axis] = -pos[axis], -vel[axis]
                    elif pos[axis] > limit:
                        pos[axis], vel[axis] = 2 * limit - pos[axis], -vel[axis]
                    pos[axis] = min(max(pos[axis], 0.0), limit)
        return np.round(video * 255).astype(np.uint8)

    def __getitem__(self, key):
        """``key`` is an index, or (index, seed) from the training sampler (the seed is not needed here)."""
        index = key[0] if isinstance(key, tuple) else key
        frames = torch.from_numpy(self.frames(int(index)))
        return {"video": frames.permute(3, 0, 1, 2).float() / 127.5 - 1.0, "index": int(index)}
