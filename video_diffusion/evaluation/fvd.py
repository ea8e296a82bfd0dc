"""
Fréchet video distance, computed as the reference (google-research frechet_video_distance
with the TF-Hub I3D) computes it:

1. uint8 frames -> float, resized to 224x224 with TF1's ``resize_bilinear``
   (align_corners False, no half-pixel centres: source = destination x in/out), then
   scaled to [-1, 1] by 2x/255 - 1;
2. the 400 I3D logits per clip;
3. the Fréchet distance between Gaussians fitted to the two feature sets (float64,
   unbiased covariance).
"""

from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from ..files import write_npz

FEATURE_SIZE = 224


def tf1_resize_bilinear(frames: torch.Tensor, size: int = FEATURE_SIZE) -> torch.Tensor:
    """
    TF1 ``tf.image.resize_bilinear(align_corners=False)``: pixel i of the output samples the
    input at i * in/out (no half-pixel offset), interpolating linearly, clamped at the edge.

    :param frames: float [..., H, W, C].
    :return: float [..., size, size, C].
    """
    def axis(n_in):
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo.to(frames.device), hi.to(frames.device), (src - lo).to(frames.dtype).to(frames.device)

    h, w = frames.shape[-3], frames.shape[-2]
    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    rows = frames[..., y0, :, :] * (1 - fy)[:, None, None] + frames[..., y1, :, :] * fy[:, None, None]
    return rows[..., x0, :] * (1 - fx)[:, None] + rows[..., x1, :] * fx[:, None]


def preprocess(videos_uint8: np.ndarray, device="cpu") -> torch.Tensor:
    """uint8 [N, T, H, W, 3] -> float [N, 3, T, 224, 224] in [-1, 1], as the reference."""
    x = torch.as_tensor(videos_uint8, device=device).float()
    x = tf1_resize_bilinear(x)
    return (2.0 * x / 255.0 - 1.0).permute(0, 4, 1, 2, 3).contiguous()


def check_videos(videos, name: str) -> np.ndarray:
    """Validate a uint8 [N, T, H, W, 3] array; a clear error naming ``name`` otherwise."""
    videos = np.asarray(videos)
    if videos.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 videos in [0, 255], got dtype {videos.dtype}")
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"{name}: expected [N, T, H, W, 3], got shape {list(videos.shape)}")
    if len(videos) < 2:
        raise ValueError(f"{name}: FVD needs at least 2 videos to estimate a covariance, got {len(videos)}")
    if videos.shape[1] < 10:
        raise ValueError(f"{name}: I3D needs at least 10 frames per video, got {videos.shape[1]}")
    return videos


@torch.inference_mode()
def i3d_features(model, videos_uint8: np.ndarray, batch_size: int = 16, device="cpu", progress=False) -> np.ndarray:
    """I3D logits [N, 400] (float64) of uint8 videos [N, T, H, W, 3], in batches."""
    batches = range(0, len(videos_uint8), batch_size)
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc="I3D features")
    out = [model(preprocess(videos_uint8[i:i + batch_size], device)).double().cpu() for i in batches]
    return torch.cat(out).numpy()


def feature_stats(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of [N, D] features."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need [N >= 2, D] features, got shape {list(f.shape)}")
    return f.mean(axis=0), np.cov(f, rowvar=False, ddof=1)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (tiny negative eigenvalues -> 0)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """
    ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    tr((S1 S2)^(1/2)) is computed as the trace of the symmetric PSD matrix
    (S1^(1/2) S2 S1^(1/2))^(1/2), i.e. from real, non-negative eigenvalues: stable when
    the covariances are singular (fewer videos than feature dimensions), with no
    imaginary parts to drop.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"feature statistics differ in shape: {mu1.shape} vs {mu2.shape}")
    root1 = _sqrt_psd(s1)
    eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def fvd_from_features(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def save_stats(path, features: np.ndarray, **meta) -> None:
    """Write mu, sigma and ``meta`` (what they were computed from) to ``path`` atomically."""
    mu, sigma = feature_stats(features)
    write_npz(path, mu=mu, sigma=sigma, num_videos=len(features), **meta)


def load_stats(path) -> Tuple[np.ndarray, np.ndarray, dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--ref_stats {str(path)!r} does not exist")
    with np.load(path) as z:
        if not {"mu", "sigma"} <= set(z.files):
            raise ValueError(f"--ref_stats {str(path)!r} holds no 'mu' and 'sigma'")
        return z["mu"], z["sigma"], {k: z[k].item() if z[k].ndim == 0 else z[k] for k in z.files
                                     if k not in ("mu", "sigma")}


def load_sample_file(path, name: str, key: str = "arr_0", num_frames: Optional[int] = None) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name} {str(path)!r} does not exist")
    with np.load(path) as z:
        if key not in z.files:
            raise ValueError(f"{name} {str(path)!r} has no array {key!r} (found {z.files})")
        videos = z[key]
    if num_frames:
        videos = videos[:, :num_frames]
    return check_videos(videos, f"{name} {path}")
