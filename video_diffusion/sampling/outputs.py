"""
Sample files: the samples as uint8 arrays, the .npz written atomically into a fresh numbered
folder (so no run overwrites another's), and GIF / PNG / MP4 previews.
"""

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..files import check_output_folder, write_json, write_npz
from ..visualize import save_gif, strip


def to_uint8(videos: torch.Tensor) -> np.ndarray:
    """[N, C, T, H, W] in [-1, 1] -> uint8 [N, T, H, W, C]."""
    return ((videos + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


def new_output_dir(parent, task: str) -> Path:
    """
    A fresh folder ``<parent>/<NNN>_<task>`` (the next free number), so that no run ever
    overwrites the files of an earlier one.
    """
    parent = Path(parent)
    check_output_folder(parent, "--out_dir")
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name.split("_")[0]) for p in parent.iterdir() if p.is_dir() and p.name.split("_")[0].isdigit()]
    number = max(taken, default=-1) + 1
    while True:  # mkdir without exist_ok: two runs started together cannot take the same folder
        path = parent / f"{number:03d}_{task}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            number += 1


def save_samples(out_dir, samples: np.ndarray, gt: Optional[np.ndarray], obs_mask: np.ndarray,
                 options: Optional[Dict] = None) -> Path:
    """
    Write samples_<N>x<T>x<H>x<W>x<C>.npz (arr_0, plus gt and obs_mask when conditioned) via
    a temp name, and ``options`` (what produced it) as sample_options.json beside it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"samples_{'x'.join(map(str, samples.shape))}.npz"
    arrays = {"arr_0": samples}
    if gt is not None:
        arrays.update(gt=gt, obs_mask=obs_mask)
    write_npz(path, **arrays)
    if options is not None:
        write_json(out_dir / "sample_options.json", options)
    return path


def mp4_available() -> bool:
    """MP4 previews need imageio with its ffmpeg plugin (pip install imageio imageio-ffmpeg)."""
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("imageio", "imageio_ffmpeg"))


def save_previews(out_dir, samples: np.ndarray, obs_mask: np.ndarray, count: int, fps: int = 8) -> List[Path]:
    """
    The first ``count`` videos as animated GIFs and PNG strips (all frames in a row, given
    frames outlined in red), plus MP4 when imageio with imageio-ffmpeg is installed.
    """
    out_dir = Path(out_dir)
    written = []
    for i in range(min(count, len(samples))):
        written.append(save_gif(out_dir / f"sample_{i:04d}.gif", samples[i], fps))
        png = out_dir / f"sample_{i:04d}.png"
        strip(samples[i], obs_mask[i]).save(png)
        written.append(png)
        if mp4_available():
            import imageio.v3 as iio
            mp4 = out_dir / f"sample_{i:04d}.mp4"
            video = samples[i] if samples.shape[-1] == 3 else np.repeat(samples[i], 3, axis=-1)
            iio.imwrite(mp4, video, fps=fps)
            written.append(mp4)
    return written
