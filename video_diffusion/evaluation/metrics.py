"""
PSNR and SSIM of predicted videos against the ground truth, on uint8 frames (data range
255), batched in torch so that 100 samples x 256 videos stay fast on a GPU.

PSNR of a set is computed from the mean squared error over all its generated frames
(``psnr_of_mse``), never as a mean of per-frame PSNRs: a mean of logarithms rewards exact
frames without bound (one exact frame is infinitely many dB) and says little about how close
the rest are. SSIM is Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
K2 = 0.03, averaged over pixels and channels (scikit-image's gaussian_weights=True
convention), then over frames.
"""

import math

import torch
import torch.nn.functional as F

# A set reproduced exactly (mean squared error 0, e.g. the perfect model given enough frames)
# has infinite PSNR; it is reported as this many dB so that tables and JSON stay finite.
PSNR_CAP = 100.0


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per frame in 8-bit units: [..., H, W, C] -> [...] (float64)."""
    return ((pred.double() - target.double()) ** 2).mean(dim=(-3, -2, -1))


def psnr_of_mse(mean_squared_error: float) -> float:
    """
    PSNR in dB of a set whose mean squared error (8-bit units, over all its generated
    frames' pixels) is given: 10 log10(255^2 / MSE); ``PSNR_CAP`` where the MSE is 0.
    """
    mean_squared_error = float(mean_squared_error)
    if mean_squared_error < 0:
        raise ValueError(f"a mean squared error cannot be negative, got {mean_squared_error}")
    return PSNR_CAP if mean_squared_error == 0 else min(PSNR_CAP, 10 * math.log10(255.0 ** 2 / mean_squared_error))


def _frames(x: torch.Tensor) -> torch.Tensor:
    """uint8 or float [..., H, W, C] -> float64 [M, C, H, W]."""
    return x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).double()


def _gaussian_window(size=11, sigma=1.5, device=None):
    g = torch.exp(-((torch.arange(size, dtype=torch.float64, device=device) - size // 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM per frame: [..., H, W, C] -> [...] (valid region of the 11x11 window)."""
    batch_shape = pred.shape[:-3]
    x, y = _frames(pred), _frames(target)
    c = x.shape[1]
    win = _gaussian_window(device=x.device).expand(c, 1, 11, 11)

    def blur(z):
        return F.conv2d(z, win, groups=c)

    mx, my = blur(x), blur(y)
    # population (not sample) covariances, as scikit-image with use_sample_covariance=False
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).reshape(batch_shape)


def best_and_mean(per_sample: torch.Tensor):
    """
    :param per_sample: [V, S] SSIM per (test video, sample), averaged over frames.
    :return: (mean over everything, mean over videos of the best sample).
    """
    per_sample = per_sample.double()
    return float(per_sample.mean()), float(per_sample.max(dim=1).values.mean())


def psnr_best_and_mean(per_sample_mse: torch.Tensor):
    """
    :param per_sample_mse: [V, S] mean squared error per (test video, sample) over its
        generated frames (every video has as many).
    :return: (PSNR of all samples together, PSNR of the set of each video's best sample).
    """
    per_sample_mse = per_sample_mse.double()
    return psnr_of_mse(per_sample_mse.mean()), psnr_of_mse(per_sample_mse.min(dim=1).values.mean())


def mean_and_std(values) -> tuple:
    """
    (mean, sample standard deviation) of a list of figures, e.g. over seeds: the one
    convention of every "mean ± std" this project prints (ddof = 1; 0 for a single value).
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
