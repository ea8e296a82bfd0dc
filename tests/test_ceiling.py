"""
The perfect-model ceiling of the embedded digits: posterior samples reproduce the given
frames exactly, spread where the data leaves the motion open, and score higher the more
frames are given.
"""

import numpy as np

from video_diffusion.data.synthetic import Digit, MovingDigits
from video_diffusion.evaluation.perfect import perfect_model_scores, perfect_samples, posterior_motions


def test_batched_corners_equal_one_digit_at_a_time():
    ds = MovingDigits(32, 12, seed=3)
    digit = ds.scene(0)[0]
    rng = np.random.default_rng(0)
    pos = rng.integers(0, np.array(ds.limits(digit.glyph)) + 1, size=(50, 2))
    vel = rng.integers(-4, 5, size=(50, 2))
    batched = ds.corners(Digit(digit.glyph, digit.colour, pos, vel), 12)
    for i in range(50):
        assert (batched[i] == ds.corners(Digit(digit.glyph, digit.colour, pos[i], vel[i]), 12)).all()
    # the frames are the scene's digits drawn at their corners
    for index in range(5):
        digits = ds.scene(index)
        assert (ds.frames(index) == ds.render(digits, [ds.corners(d, 12) for d in digits])).all()


def test_posterior_samples_keep_the_given_frames_and_spread_over_the_rest():
    ds = MovingDigits(32, 8, seed=11)
    rng = np.random.default_rng(0)
    unique = digits = 0
    for index in range(6):
        for digit in ds.scene(index):
            truth = ds.corners(digit, 8)
            one = posterior_motions(ds, digit, [0], 64, rng)
            two = posterior_motions(ds, digit, [0, 1], 64, rng)
            c1 = np.stack([ds.corners(m, 8) for m in one])
            c2 = np.stack([ds.corners(m, 8) for m in two])
            assert (c1[:, 0] == truth[0]).all() and (c2[:, :2] == truth[:2]).all()
            # one frame leaves the direction open: the last corners scatter widely
            assert c1[:, -1].std(axis=0).max() > 3
            # two frames determine the motion, unless a bounce between them could explain them too
            # (a digit one pixel from the border: one pixel towards it, or three and back)
            tracks = {c.tobytes() for c in c2}
            assert truth.tobytes() in tracks and len(tracks) <= 4
            unique += len(tracks) == 1
            digits += 1
            speeds = np.abs(np.stack([m.vel for m in one])).max(axis=1)
            assert speeds.min() >= 1 and speeds.max() <= round(0.1 * 32)
    assert unique >= 0.6 * digits
    video = perfect_samples(ds, 0, [0, 1], 3)
    assert video.shape == (3, 8, 32, 32, 3) and (video[:, :2] == ds.frames(0)[:2]).all()


def test_more_given_frames_score_higher_and_best_of_k_beats_the_mean():
    ds = MovingDigits(32, 8, seed=5)
    mask2 = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    mask4 = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    two = perfect_model_scores(ds, mask2, num_videos=8, samples_per_video=3)
    four = perfect_model_scores(ds, mask4, num_videos=8, samples_per_video=3)
    assert two["psnr_best"] >= two["psnr_mean"] and two["ssim_best"] >= two["ssim_mean"]
    one = perfect_model_scores(ds, np.array([1, 0, 0, 0, 0, 0, 0, 0]), num_videos=8, samples_per_video=3)
    assert two["psnr_best"] >= two["psnr_mean"] and one["psnr_best"] > one["psnr_mean"]
    # two frames pin the motion, one leaves it open; more frames add nothing (but occlusions)
    assert two["psnr_mean"] > one["psnr_mean"] + 5 and two["ssim_mean"] > one["ssim_mean"]
    assert four["psnr_mean"] >= two["psnr_mean"] - 1e-6
