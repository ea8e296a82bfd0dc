import numpy as np
import pytest
import torch

from video_diffusion.data import MovingDigits, TrainBatchSampler, resolve_num_workers, train_loader


def test_moving_digits_are_deterministic_per_seed_and_index():
    a, b = MovingDigits(32, 6, seed=1), MovingDigits(32, 6, seed=1)
    assert np.array_equal(a.frames(5), b.frames(5))
    assert not np.array_equal(a.frames(5), a.frames(6))
    assert not np.array_equal(a.frames(5), MovingDigits(32, 6, seed=2).frames(5))


@pytest.mark.parametrize("channels", [1, 3])
def test_moving_digits_layout_and_range(channels):
    data = MovingDigits(24, 7, channels=channels)
    frames = data.frames(0)
    assert frames.shape == (7, 24, 24, channels) and frames.dtype == np.uint8
    item = data[0]["video"]
    assert item.shape == (channels, 7, 24, 24) and item.dtype == torch.float32
    assert item.min() >= -1 and item.max() <= 1 and item.max() > 0  # something is drawn


def test_digits_move_and_stay_in_the_frame():
    data = MovingDigits(32, 30, channels=1)
    for i in range(20):
        v = data.frames(i)[..., 0].astype(float)
        assert (v.sum(axis=(1, 2)) > 0).all()  # a digit is visible in every frame (never leaves)
        centroids = [np.argwhere(f > 0).mean(0) for f in v]
        assert np.abs(np.diff(centroids, axis=0)).sum() > 1  # and it moves


def _continue(first, second, limits, num_frames):
    """The corners a digit takes after two observed corners, if its velocity is their difference
    and it reflects off the borders (written out here independently of the generator)."""
    pos, vel, out = second.copy(), second - first, [first, second]
    for _ in range(num_frames - 2):
        pos = pos + vel
        for k in range(2):
            if pos[k] < 0:
                pos[k], vel[k] = -pos[k], -vel[k]
            elif pos[k] > limits[k]:
                pos[k], vel[k] = 2 * limits[k] - pos[k], -vel[k]
        out.append(pos.copy())
    return np.stack(out)


def test_digit_motion_is_whole_pixels_and_two_frames_determine_it():
    data = MovingDigits(32, 12, seed=4)
    bounces = checked = 0
    for index in range(400):
        for digit in data.scene(index):
            assert digit.pos.dtype.kind == "i" and digit.vel.dtype.kind == "i"
            assert (digit.vel != 0).any()  # every digit moves
            corners = data.corners(digit, 12)
            steps = np.diff(corners, axis=0)
            bounces += int((np.sign(steps[1:]) * np.sign(steps[:-1]) < 0).any())
            if (steps[0] == digit.vel).all():  # no bounce between the two given frames
                checked += 1
                predicted = _continue(corners[0], corners[1], data.limits(digit.glyph), 12)
                assert (predicted == corners).all(), (index, corners, predicted)
    assert checked > 500 and bounces > 100  # many digits, many of them bouncing later


def test_a_digit_bounces_when_its_ink_touches_the_border():
    # each glyph is cropped to its ink: the box the generator reflects is the box the frames show
    data = MovingDigits(32, 12, seed=4)
    assert data.fingerprint()["glyphs"] == "ink"
    for glyph in data.glyphs:
        assert glyph[0].any() and glyph[-1].any() and glyph[:, 0].any() and glyph[:, -1].any()
    touched = 0
    for index in range(100):
        video = data.frames(index)
        for digit, corners in ((d, data.corners(d, 12)) for d in data.scene(index)):
            limit = np.array(data.limits(digit.glyph))
            at_border = ((corners == 0) | (corners == limit)).any(axis=1)
            touched += int(at_border.any())
            for f in np.flatnonzero(at_border):  # the ink reaches the frame's edge there
                edges = (video[f, 0].any(), video[f, -1].any(), video[f, :, 0].any(), video[f, :, -1].any())
                assert any(edges), (index, f)
    assert touched > 20


def test_still_digits_do_not_move_and_say_so_in_the_fingerprint():
    moving, still = MovingDigits(32, 6, seed=1), MovingDigits(32, 6, seed=1, still=True)
    frames = still.frames(3)
    assert (frames == frames[:1]).all() and frames.max() > 0
    assert moving.fingerprint()["motion"] == "pixel" and "still" not in moving.fingerprint()
    assert still.fingerprint()["still"] is True


def test_two_training_seeds_train_on_their_own_videos_and_are_scored_on_the_same_held_out_ones():
    from video_diffusion.config import Config, apply_overrides
    from video_diffusion.data import create_dataset
    from video_diffusion.sampling.plan import test_dataset
    seed0, seed1 = (apply_overrides(Config(), {"image_size": 32, "seq_len": 6, "seed": s}) for s in (0, 1))
    assert not np.array_equal(create_dataset(seed0).frames(2), create_dataset(seed1).frames(2))
    held0, held1 = test_dataset(seed0, 6), test_dataset(seed1, 6)
    for v in range(4):
        assert np.array_equal(held0.frames(v), held1.frames(v))
        assert not np.array_equal(held0.frames(v), create_dataset(seed0).frames(v))


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="channels"):
        MovingDigits(32, 4, channels=2)
    with pytest.raises(IndexError):
        MovingDigits(32, 4, num_videos=3).frames(3)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_global_batch_is_independent_of_world_size(world_size):
    global_batch = 8
    ref = TrainBatchSampler(20, global_batch, 0, 1, seed=3)
    for step in range(7):  # crosses epoch boundaries (20 items, 8 per step)
        parts = [TrainBatchSampler(20, global_batch // world_size, r, world_size, seed=3).indices_for_step(step)
                 for r in range(world_size)]
        assert sum(parts, []) == ref.indices_for_step(step)


def test_each_epoch_is_a_permutation_and_resume_continues_the_stream():
    s = TrainBatchSampler(12, 4, 0, 1, seed=0)
    stream = sum((s.indices_for_step(i) for i in range(6)), [])
    assert sorted(stream[:12]) == list(range(12)) and sorted(stream[12:]) == list(range(12))
    assert stream[:12] != stream[12:]  # reshuffled per epoch
    resumed = iter(TrainBatchSampler(12, 4, 0, 1, seed=0, start_step=4))
    keys = next(resumed)
    assert [index for index, _ in keys] == stream[16:20]
    assert keys == s.keys_for_step(4)  # the same item seeds (they pick each video's window)
    assert len({seed for _, seed in keys}) == 4


def test_train_loader_with_workers_matches_in_process_loading():
    data = MovingDigits(16, 3, num_videos=50)
    a = train_loader(data, 4, 0, 1, seed=0, start_step=2, num_workers=0)
    b = train_loader(data, 4, 0, 1, seed=0, start_step=2, num_workers=2)
    for _ in range(3):
        assert torch.equal(next(a)["video"], next(b)["video"])


def test_num_workers_resolution():
    assert resolve_num_workers(3) == 3
    auto = resolve_num_workers(-1)
    assert 0 <= auto <= 4
