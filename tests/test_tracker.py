"""
The object tracker, the model-free reference that knows the digits are objects reflecting
off the borders: its motion is the generator's, forwards and backwards, and it predicts
exactly what it can know (objects with visible motion, bounces included).
"""

import numpy as np
import pytest
from conftest import REPO, digits_behind_each_other

from video_diffusion.data.synthetic import Digit, MovingDigits, reflect_step
from video_diffusion.evaluation.quality import copy_last_given
from video_diffusion.evaluation.tracker import connected_ink, move, segment, track


def test_motion_is_the_generators_and_runs_backwards():
    ds = MovingDigits(32, 10, seed=1)
    glyph = ds.glyphs[3]
    limit = np.array(ds.limits(glyph))
    rng = np.random.default_rng(0)
    bounced = 0
    for _ in range(200):
        pos = rng.integers(0, limit + 1)
        vel = rng.integers(-3, 4, size=2)
        corners = ds.corners(Digit(glyph, np.ones(3), pos, vel), 10)
        bounced += bool((np.diff(np.sign(np.diff(corners, axis=0)), axis=0) != 0).any())
        for f in range(10):
            assert (move(pos, vel, limit, f) == corners[f]).all()
        # from frame 9 with the velocity it has there, running back reaches every earlier corner
        state, v9 = pos, vel
        for _ in range(9):
            state, v9 = reflect_step(state, v9, limit)
        for f in range(10):
            assert (move(corners[9], v9, limit, -f) == corners[9 - f]).all()
    assert bounced > 50  # the check covered reflections, not only straight lines


def test_connected_ink_is_eight_connected():
    ink = np.zeros((8, 8), dtype=bool)
    ink[1:3, 1:3] = True
    ink[3, 3] = True  # touches the first blob diagonally
    ink[6:8, 5:8] = True
    labels = connected_ink(ink)
    assert labels.max() == 2 and (labels[~ink] == 0).all()
    assert labels[1, 1] == labels[3, 3] != labels[7, 7]


def _video(squares, size=32, frames=8):
    """A video of solid squares (glyph box = ink box, so the tracker can know everything)."""
    ds = MovingDigits(size, frames)
    digits = [Digit(np.ones((s, s), np.float32), np.array(colour), np.array(pos), np.array(vel))
              for s, colour, pos, vel in squares]
    return ds.render(digits, [ds.corners(d, frames) for d in digits])


def test_a_bouncing_object_is_predicted_exactly():
    # 6 px square moving right 3 px per frame from x = 20: it hits the border in frame 2 and comes back
    video = _video([(6, (1.0, 0.5, 0.4), (5, 20), (1, 3))])
    assert (np.diff(np.argmax(video.max(axis=(1, 3)) > 0, axis=1)) < 0).any()  # it bounced
    pred = track(video, [0, 1])
    assert (pred == video).all()
    # infill: the velocity comes from frames 7 apart, with the bounce between them
    assert (track(video, [0, 7]) == video).all()


def test_touching_objects_are_split_by_their_motion():
    # two squares side by side in frame 1 (one region of ink) moving apart vertically
    video = _video([(6, (1.0, 0.2, 0.2), (10, 8), (2, 0)), (6, (0.3, 1.0, 0.3), (14, 14), (-2, 0))])
    frame1 = video[1].astype(np.float32)
    assert connected_ink(frame1.max(axis=-1) > 0).max() == 1
    objects = segment(frame1, video[0].astype(np.float32), 1, 3)
    assert len(objects) == 2
    assert (track(video, [0, 1]) == video).all()


def test_one_given_frame_copies_and_no_given_frame_is_an_error():
    video = MovingDigits(32, 8, seed=2).frames(0)
    mask = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    assert (track(video, [0]) == copy_last_given(video, mask)).all()
    with pytest.raises(ValueError, match="at least one given frame"):
        track(video, [])
    with pytest.raises(ValueError, match="not all in the video's 8 frames"):
        track(video, [0, 8])
    with pytest.raises(ValueError, match=r"uint8 video \[T, H, W, C\]"):
        track(video[0], [0])


def test_digits_ceiling_reports_the_tracker(tmp_path):
    import json
    import runpy

    from video_diffusion.config import PRESETS, Config, apply_overrides
    from video_diffusion.evaluation.quality import set_scores, video_scores
    from video_diffusion.sampling.plan import test_dataset

    out = tmp_path / "ceiling.json"
    main = runpy.run_path(str(REPO / "scripts" / "digits_ceiling.py"))["main"]
    main(["--num_videos", "2", "--samples_per_video", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    cfg = apply_overrides(Config(), PRESETS["tiny"])
    data = test_dataset(cfg, cfg.model.seq_len)
    mask = np.array([1, 1] + [0] * (cfg.model.seq_len - 2))
    scores = set_scores([video_scores(track(data.frames(v), [0, 1]), data.frames(v), mask) for v in range(2)])
    assert result["object_tracker"] == pytest.approx(scores)
    # the true frames with faint noise: SSIM falls with the noise, far below what PSNR says
    noisy = result["true_frames_with_noise"]
    assert list(noisy) == ["4", "8"]
    # an error of at most sigma^2 (clipping at black only lowers it): PSNR >= 10 log10(255^2 / 64) = 30.1
    assert noisy["4"]["psnr"] > noisy["8"]["psnr"] > 29.5
    assert 1 > noisy["4"]["ssim"] > noisy["8"]["ssim"]
    with pytest.raises(SystemExit):
        main(["--num_videos", "2", "--noise_levels", "0"])


def test_a_bounce_between_the_given_frames_is_read_as_the_slower_motion():
    # a 6 px square in a 32 px frame (limit 26): rows 25 -> 24 is -1 per frame, or +3 reflected
    # off the bottom border (25 + 3 = 28 -> 24); both redraw the given frames, and the
    # generator's prior (uniform speed) favours the slower
    video = _video([(6, (1.0, 0.5, 0.4), (25, 8), (-1, 1))])
    assert (track(video, [0, 1]) == video).all()
    fast = _video([(6, (1.0, 0.5, 0.4), (25, 8), (3, 1))])  # the other reading, seen from frame 2 on
    assert (fast[:2] == video[:2]).all() and not (fast[2:] == video[2:]).all()
