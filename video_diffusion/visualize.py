"""
Pictures of videos: PNG strips (the frames of a video side by side, given frames outlined
in red), grids of such strips, and animated GIFs. Used by the sample script, the quality
harness and the previews written during training.
"""

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

GIVEN_COLOUR = (220, 30, 30)
PAD = 2


def _rgb(frame: np.ndarray, scale: int) -> Image.Image:
    img = Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame).convert("RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def strip(video: np.ndarray, obs_mask: Optional[Sequence] = None, scale: int = 1) -> Image.Image:
    """
    One video as a row of frames, each with a 2-pixel border: red for a given frame, white otherwise.

    :param video: uint8 [T, H, W, C].
    :param obs_mask: [T], 1 on given frames (None = none given).
    :param scale: integer upscaling of each frame (nearest neighbour, so pixels stay visible).
    """
    t, h, w = video.shape[0], video.shape[1] * scale, video.shape[2] * scale
    out = Image.new("RGB", (t * (w + 2 * PAD), h + 2 * PAD), "white")
    draw = ImageDraw.Draw(out)
    for f in range(t):
        x0 = f * (w + 2 * PAD)
        if obs_mask is not None and obs_mask[f]:
            draw.rectangle([x0, 0, x0 + w + 2 * PAD - 1, h + 2 * PAD - 1], fill=GIVEN_COLOUR)
        out.paste(_rgb(video[f], scale), (x0 + PAD, PAD))
    return out


def grid(blocks: Sequence[Sequence[Image.Image]], gap: int = 6) -> Image.Image:
    """Stack blocks of strips vertically: strips within a block touch, blocks are ``gap`` pixels apart."""
    rows = [(img, i > 0 and j == 0) for i, block in enumerate(blocks) for j, img in enumerate(block)]
    width = max(img.width for img, _ in rows)
    height = sum(img.height + (gap if spaced else 0) for img, spaced in rows)
    out = Image.new("RGB", (width, height), "white")
    y = 0
    for img, spaced in rows:
        y += gap if spaced else 0
        out.paste(img, (0, y))
        y += img.height
    return out


def auto_scale(size: int, target: int = 64) -> int:
    """An integer upscaling that shows a frame of ``size`` pixels at about ``target`` pixels or more."""
    return max(1, -(-target // size))


def save_gif(path, video: np.ndarray, fps: int = 8, scale: int = 1) -> Path:
    """An animated, looping GIF of a uint8 [T, H, W, C] video."""
    frames = [_rgb(f, scale) for f in video]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return Path(path)
