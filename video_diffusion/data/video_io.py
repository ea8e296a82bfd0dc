"""
Reading videos from disk: discovery, cheap frame counting, decoding and resizing.

Formats: containers (.mp4 .avi .webm .mov, decoded with PyAV), GIF (Pillow, exact),
arrays (.npz / .npy holding uint8 [T, H, W, C] under ``video`` or ``arr_0``), and
directories of numbered frame images. Every failure raises ``BadVideo`` naming the file.
"""

import re
import zipfile
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageSequence

CONTAINER_EXTS = {".mp4", ".avi", ".webm", ".mov"}
GIF_EXTS = {".gif"}
ARRAY_EXTS = {".npz", ".npy"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
ARRAY_KEYS = ("video", "arr_0")


class BadVideo(ValueError):
    """A video that cannot be used; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def _natural_key(p: Path):
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)]


def frame_files(directory: Path) -> List[Path]:
    """The image files of a frame directory, in numeric order (frame_2 before frame_10)."""
    return sorted((p for p in directory.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()), key=_natural_key)


def find_videos(root) -> List[Path]:
    """
    Every video under ``root`` (recursive): files with a known extension, and directories
    that directly hold frame images. Sorted by path, so the order is the same everywhere.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data_dir {str(root)!r} is not a directory")
    found = []
    for p in root.rglob("*"):
        if p.is_file() and p.suffix.lower() in CONTAINER_EXTS | GIF_EXTS | ARRAY_EXTS:
            found.append(p)
        elif p.is_dir() and any(q.suffix.lower() in IMAGE_EXTS for q in p.iterdir()):
            found.append(p)
    if not found:
        raise FileNotFoundError(f"--data_dir {str(root)!r} holds no videos (looked for "
                                f"{', '.join(sorted(CONTAINER_EXTS | GIF_EXTS | ARRAY_EXTS))} files and "
                                "folders of frame images)")
    by_stem = {}
    for p in found:
        by_stem.setdefault(p.with_suffix("") if p.is_file() else p, []).append(p)
    twins = [sorted(ps) for ps in by_stem.values() if len(ps) > 1]
    if twins:
        names = ", ".join(" and ".join(q.name for q in ps) for ps in sorted(twins)[:3])
        raise ValueError(f"--data_dir {str(root)!r}: {len(twins)} video(s) are stored under two or more extensions "
                         f"({names}{', ...' if len(twins) > 3 else ''}): each would count as a separate video. "
                         "Keep one format per video (e.g. delete the .gif copies).")
    return sorted(found)


def _array_key(names, path) -> str:
    for key in ARRAY_KEYS:
        if key in names:
            return key
    raise BadVideo(path, f"no array named {' or '.join(ARRAY_KEYS)} (found {sorted(names)})")


def _npz_header(path: Path) -> Tuple[tuple, np.dtype]:
    """Shape and dtype of the video array in an .npz, read from the header only."""
    with zipfile.ZipFile(path) as z:
        key = _array_key([n[:-4] for n in z.namelist() if n.endswith(".npy")], path)
        with z.open(key + ".npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is not None:
                shape, _, dtype = read_header(f)
                return shape, dtype
    with np.load(path) as arrays:  # a newer .npy format version: read the array itself
        arr = arrays[key]
        return arr.shape, arr.dtype


def probe(path) -> Tuple[int, int]:
    """
    (number of frames, channels) of a video without decoding all of it where possible.

    :raises BadVideo: the file cannot be opened or does not hold a [T, H, W, C] uint8 video.
    """
    path = Path(path)
    try:
        if path.is_dir():
            files = frame_files(path)
            with Image.open(files[0]) as im:
                return len(files), len(im.getbands())
        ext = path.suffix.lower()
        if ext in ARRAY_EXTS:
            if ext == ".npy":
                arr = np.load(path, mmap_mode="r")
                shape, dtype = arr.shape, arr.dtype
            else:
                shape, dtype = _npz_header(path)
            if len(shape) != 4 or dtype != np.uint8:
                raise BadVideo(path, f"expected uint8 [T, H, W, C], got {np.dtype(dtype).name} {list(shape)}")
            return shape[0], shape[3]
        if ext in GIF_EXTS:
            with Image.open(path) as im:
                return getattr(im, "n_frames", 1), 3
        import av

        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BadVideo(path, "no video stream")
            stream = container.streams.video[0]
            count = stream.frames or sum(1 for _ in container.decode(stream))
            return count, 3
    except BadVideo:
        raise
    except Exception as e:  # every decoder has its own exception types
        raise BadVideo(path, f"cannot be decoded ({type(e).__name__}: {e})") from e


def read_frames(path, start: int = 0, count: int = -1, stride: int = 1) -> np.ndarray:
    """
    Frames start, start + stride, ... (``count`` of them; -1 = to the end) as uint8 [T, H, W, C].

    :raises BadVideo: decoding failed or the video is shorter than asked.
    """
    path = Path(path)
    stop = None if count < 0 else start + (count - 1) * stride + 1
    try:
        if path.is_dir():
            files = frame_files(path)[start:stop:stride]
            frames = [np.asarray(Image.open(f).convert("RGB" if _bands(f) >= 3 else "L")) for f in files]
            video = np.stack([f[..., None] if f.ndim == 2 else f for f in frames])
        elif path.suffix.lower() in ARRAY_EXTS:
            if path.suffix.lower() == ".npy":
                video = np.load(path, mmap_mode="r")[start:stop:stride]
            else:
                with np.load(path) as z:
                    video = z[_array_key(z.files, path)][start:stop:stride]
            video = np.ascontiguousarray(video)
        elif path.suffix.lower() in GIF_EXTS:
            with Image.open(path) as im:
                frames = [np.asarray(f.convert("RGB")) for i, f in enumerate(ImageSequence.Iterator(im))
                          if i >= start and (stop is None or i < stop) and (i - start) % stride == 0]
            video = np.stack(frames)
        else:
            import av

            frames = []
            with av.open(str(path)) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if stop is not None and i >= stop:
                        break
                    if i >= start and (i - start) % stride == 0:
                        frames.append(frame.to_ndarray(format="rgb24"))
            video = np.stack(frames)
    except BadVideo:
        raise
    except Exception as e:
        raise BadVideo(path, f"cannot be decoded ({type(e).__name__}: {e})") from e
    if count > 0 and len(video) < count:
        raise BadVideo(path, f"has {len(video)} frames from frame {start} with stride {stride}; {count} needed")
    return video


def _bands(path) -> int:
    with Image.open(path) as im:
        return len(im.getbands())


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """
    Scale the short side to ``size`` and centre-crop to size x size (improved-diffusion's
    recipe): halve with box filtering while the short side is at least 2 x size (cheap
    anti-aliasing), then one bicubic resize.

    :param frame: uint8 [H, W, C] with C = 1 or 3.
    :return: uint8 [size, size, C].
    """
    channels = frame.shape[-1]
    img = Image.fromarray(frame[..., 0] if channels == 1 else frame)
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    if min(img.size) != size:
        scale = size / min(img.size)
        img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    arr = arr[..., None] if arr.ndim == 2 else arr
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]
