"""
Per-frame PSNR and SSIM of predicted videos against the ground truth, on uint8 frames
(data range 255), batched in torch so that 100 samples x 256 videos stay fast on a GPU.
SSIM is Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
averaged over pixels and channels (scikit-image's gaussian_weights=True convention).
"""

import torch
import torch.nn.functional as F

# Identical frames have infinite PSNR; means over frames count them as this many dB so that
# they stay finite (a frame predicted exactly, e.g. by the perfect model, scores 100).
PSNR_CAP = 100.0


def _frames(x: torch.Tensor) -> torch.Tensor:
    """uint8 or float [..., H, W, C] -> float64 [M, C, H, W]."""
    return x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).double()


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per frame: [..., H, W, C] -> [...]. Identical frames give +inf."""
    mse = ((pred.double() - target.double()) ** 2).mean(dim=(-3, -2, -1))
    return 10 * torch.log10(255.0 ** 2 / mse)


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
    :param per_sample: [V, S] a metric per (test video, sample), averaged over frames.
    :return: (mean over everything, mean over videos of the best sample).
    """
    per_sample = per_sample.double()
    return float(per_sample.mean()), float(per_sample.max(dim=1).values.mean())


def mean_and_std(values) -> tuple:
    """
    (mean, sample standard deviation) of a list of figures, e.g. over seeds: the one
    convention of every "mean ± std" this project prints (ddof = 1; 0 for a single value).
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
