"""
What a perfect model can score on the embedded moving digits.

The generator moves each digit by whole pixels, so two consecutive given frames determine a
digit's motion and a perfect model predicts it exactly (up to occlusions, where two digits
overlap in a given frame and hide a corner); from one frame the velocity stays open. That
uncertainty is sampled exactly here: each digit's motion is drawn from the generator's own
prior (corner, speed, direction), kept only when it reproduces the digit's corners in every
given frame (rejection sampling), and rendered. Glyph and colour are taken as known, so the
figures are an upper bound for any model: a perfect diffusion model draws exactly these samples.
"""

from typing import Dict, List, Sequence

import numpy as np
import torch

from ..data.synthetic import Digit, MovingDigits, draw_motion
from .metrics import best_and_mean, psnr_best_and_mean


def posterior_motions(ds: MovingDigits, digit: Digit, given: Sequence[int], num: int, rng: np.random.Generator,
                      batch: int = 4096, max_draws: int = 2_000_000) -> List[Digit]:
    """
    ``num`` motions of ``digit`` drawn from the generator's prior, given its integer corners
    in the frames ``given`` (indices into the video).

    :param ds: the dataset that drew the digit (frame size and sequence length).
    :param digit: the true digit (its glyph and colour are kept; its motion is resampled).
    :param given: indices of the given frames.
    :raises RuntimeError: if ``max_draws`` draws give fewer than ``num`` consistent motions.
    """
    given = np.asarray(sorted(given))
    observed = ds.corners(digit, ds.seq_len)[given]
    limits = ds.limits(digit.glyph)
    kept_pos, kept_vel = [], []
    draws = 0
    while sum(len(p) for p in kept_pos) < num:
        if draws >= max_draws:
            raise RuntimeError(f"only {sum(len(p) for p in kept_pos)} of {num} motions matched the given "
                               f"frames in {max_draws} draws")
        draws += batch
        pos, vel = draw_motion(rng, limits, ds.image_size, size=batch, still=ds.still)
        if given[0] == 0:
            pos[:] = observed[0]  # the first corner is given: the prior conditioned on it, cheaper
        corners = ds.corners(Digit(digit.glyph, digit.colour, pos, vel), ds.seq_len)[:, given]
        match = (corners == observed).all(axis=(1, 2))
        kept_pos.append(pos[match])
        kept_vel.append(vel[match])
    pos, vel = np.concatenate(kept_pos)[:num], np.concatenate(kept_vel)[:num]
    return [Digit(digit.glyph, digit.colour, p, v) for p, v in zip(pos, vel)]


def perfect_samples(ds: MovingDigits, index: int, given: Sequence[int], num: int, seed: int = 0) -> np.ndarray:
    """
    ``num`` samples uint8 [num, T, H, W, C] of video ``index`` from the exact posterior given
    the frames ``given``: what a perfect model of this data would draw.
    """
    rng = np.random.default_rng([seed, index])
    digits = ds.scene(index)
    motions = [posterior_motions(ds, d, given, num, rng) for d in digits]
    return np.stack([ds.render(digits, [ds.corners(m[k], ds.seq_len) for m in motions]) for k in range(num)])


def perfect_model_scores(ds: MovingDigits, obs_mask: np.ndarray, num_videos: int, samples_per_video: int,
                         seed: int = 0) -> Dict[str, float]:
    """
    The harness's figures (over the frames not given) for a perfect model on the first
    ``num_videos`` videos of ``ds``: PSNR (from the mean squared error over the set) and SSIM,
    of all samples and of each video's best of ``samples_per_video``.

    :param obs_mask: [T], 1 on the given frames.
    """
    from .quality import video_scores  # quality imports the sampling stack; this module stays light

    given = np.flatnonzero(obs_mask)
    ps, ss = [], []
    for v in range(num_videos):
        gt = ds.frames(v)
        samples = perfect_samples(ds, v, given, samples_per_video, seed=seed)
        if not (samples[:, given] == gt[given]).all():
            raise RuntimeError(f"video {v}: a posterior sample differs from a given frame")
        scores = [video_scores(x, gt, obs_mask) for x in samples]
        ps.append([x[0] for x in scores])
        ss.append([x[1] for x in scores])
    psnr_mean, psnr_best = psnr_best_and_mean(torch.tensor(ps))
    ssim_mean, ssim_best = best_and_mean(torch.tensor(ss))
    return {"psnr_mean": psnr_mean, "psnr_best": psnr_best, "ssim_mean": ssim_mean, "ssim_best": ssim_best}
