"""
A dataset over a folder of videos (see ``video_io`` for the formats).

Every file is checked when the dataset is built (it opens, holds enough frames, has a
usable channel count), so a bad file is reported at start-up, by name, rather than
hours into training. With ``skip_bad`` the bad files are left out and listed instead.
Nothing is ever padded: a video shorter than the window is an error or a skip.
"""

import hashlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .video_io import BadVideo, find_videos, probe, read_frames, resize_frame

WINDOWS = ("random", "first", "all")


class VideoFolder(torch.utils.data.Dataset):
    """
    :param root: folder searched recursively.
    :param image_size: frames are resized (short side) and centre-cropped to this.
    :param seq_len: frames per item.
    :param channels: 3 (RGB) or 1 (grayscale; RGB sources are converted to luminance).
    :param frame_stride: take every k-th frame.
    :param windows: "random" (training: a random window per draw, from the draw's seed),
        "first" (evaluation: the first window of each video), "all" (evaluation: every
        non-overlapping window of each video, in order).
    :param class_cond: label items by the file-name prefix before the first "_".
    :param skip_bad: leave out unusable videos (listed in ``self.skipped``) instead of raising.
    """

    def __init__(self, root, image_size: int, seq_len: int, channels: int = 3, frame_stride: int = 1,
                 windows: str = "random", class_cond: bool = False, skip_bad: bool = False):
        if windows not in WINDOWS:
            raise ValueError(f"windows must be one of {WINDOWS}, got {windows!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if frame_stride < 1:
            raise ValueError(f"--frame_stride must be >= 1, got {frame_stride}")
        self.root, self.image_size, self.seq_len, self.channels = Path(root), image_size, seq_len, channels
        self.frame_stride, self.windows = frame_stride, windows
        self.span = (seq_len - 1) * frame_stride + 1  # source frames one item covers
        self.skipped: List[Tuple[str, str]] = []
        self.videos: List[Tuple[Path, int]] = []
        for path in find_videos(root):
            try:
                self.videos.append((path, self._check(path)))
            except BadVideo as e:
                if not skip_bad:
                    raise BadVideo(e.path, e.reason + " (--skip_bad_videos leaves such files out)") from None
                self.skipped.append((e.path, e.reason))
        if not self.videos:
            raise FileNotFoundError(f"--data_dir {str(root)!r}: none of its {len(self.skipped)} videos is usable")
        self.classes: Optional[List[str]] = None
        if class_cond:
            self.classes = sorted({self._class_name(p) for p, _ in self.videos})
        # evaluation items: (video, first frame) pairs
        if windows == "first":
            self.items = [(i, 0) for i in range(len(self.videos))]
        elif windows == "all":
            self.items = [(i, s) for i, (_, n) in enumerate(self.videos) for s in range(0, n - self.span + 1, self.span)]
        else:
            self.items = None

    def fingerprint(self) -> Dict:
        """What identifies the data: the usable files (relative names, sizes) under the root, hashed."""
        h = hashlib.sha256()
        for path, _ in self.videos:
            h.update(f"{path.relative_to(self.root)}\0{path.stat().st_size}\n".encode())
        return {"source": str(self.root.resolve()), "videos": len(self.videos), "skipped": len(self.skipped),
                "files_sha256": h.hexdigest()[:16]}

    @staticmethod
    def _class_name(path: Path) -> str:
        return path.name.split("_")[0]

    def _check(self, path) -> int:
        count, channels = probe(path)
        if channels not in (1, 3):
            raise BadVideo(path, f"has {channels} channels; 1 (grayscale) or 3 (RGB) expected")
        if channels == 1 and self.channels == 3:
            raise BadVideo(path, "is grayscale but the model expects RGB (--rgb false for grayscale data)")
        if count < self.span:
            raise BadVideo(path, f"has {count} frames; a window of --seq_len {self.seq_len} with "
                                 f"--frame_stride {self.frame_stride} needs {self.span}")
        return count

    def __len__(self):
        return len(self.videos) if self.items is None else len(self.items)

    def __getitem__(self, key):
        """``key`` is an index, or (index, seed) during training (the seed picks the window)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        if self.items is None:
            video_index = index
            path, count = self.videos[index]
            rng = np.random.default_rng(seed)
            start = int(rng.integers(0, count - self.span + 1))
        else:
            video_index, start = self.items[index]
            path, _ = self.videos[video_index]
        frames = read_frames(path, start, self.seq_len, self.frame_stride)
        if frames.shape[-1] != self.channels:  # RGB source, grayscale model: luminance (ITU-R 601)
            frames = np.round(frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
            frames = frames.clip(0, 255).astype(np.uint8)
        frames = np.stack([resize_frame(f, self.image_size) for f in frames])
        item = {"video": torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0, "index": index}
        if self.classes is not None:
            item["y"] = self.classes.index(self._class_name(path))
        return item
