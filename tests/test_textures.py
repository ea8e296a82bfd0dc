"""The second embedded dataset: textured shapes over a drifting textured background."""

import numpy as np
import pytest

from conftest import micro_config
from video_diffusion.data import MovingTextures, create_dataset
from video_diffusion.evaluation.quality import copy_last_given, set_scores, video_scores
from video_diffusion.sampling import plan
from video_diffusion.config import validate


def test_videos_are_a_function_of_seed_and_index_with_the_right_shape():
    a, b = MovingTextures(32, 8, seed=3), MovingTextures(32, 8, seed=3)
    for i in (0, 7, 99):
        assert np.array_equal(a.frames(i), b.frames(i))
    v = a.frames(0)
    assert v.shape == (8, 32, 32, 3) and v.dtype == np.uint8
    item = a[(5, 1234)]  # the training sampler's (index, seed) key
    assert item["video"].shape == (3, 8, 32, 32) and item["index"] == 5
    assert -1 <= item["video"].min() and item["video"].max() <= 1
    assert MovingTextures(32, 8, channels=1).frames(0).shape == (8, 32, 32, 1)
    assert not np.array_equal(MovingTextures(32, 8, seed=4).frames(0), v)
    with pytest.raises(ValueError, match="image_size must be >= 16"):
        MovingTextures(8, 4)


def test_nothing_is_black_and_things_move():
    data = MovingTextures(32, 8, seed=0)
    for i in range(20):
        v = data.frames(i).astype(int)
        assert (v.max(axis=-1) > 0).all()  # textured everywhere: no black background for a tracker to find
        assert np.abs(v[1:] - v[:-1]).mean() > 1  # shapes move on (the background drifts or stays)
        assert len(np.unique(v[0].reshape(-1, 3), axis=0)) > 200  # textures, not flat fills


def test_held_out_videos_are_others_and_the_same_for_every_training_seed(tmp_path):
    cfg = micro_config(tmp_path, image_size=32, seq_len=8, dataset="textures")
    train = create_dataset(cfg)
    assert isinstance(train, MovingTextures) and train.fingerprint()["source"] == "moving-textures"
    held = plan.test_dataset(cfg, 8)
    held_other_seed = plan.test_dataset(micro_config(tmp_path, image_size=32, seq_len=8, dataset="textures", seed=5), 8)
    assert held.seed != train.seed and held.seed == held_other_seed.seed
    train_videos = {train.frames(i).tobytes() for i in range(50)}
    assert not any(held.frames(i).tobytes() in train_videos for i in range(50))


def test_baselines_score_below_a_perfect_copy():
    data = MovingTextures(32, 8, seed=1)
    mask = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    copy = set_scores([video_scores(copy_last_given(data.frames(i), mask), data.frames(i), mask) for i in range(8)])
    black = set_scores([video_scores(np.zeros_like(data.frames(i)), data.frames(i), mask) for i in range(8)])
    # copying keeps the textures (a high SSIM floor), but the motion costs it; black is far off
    assert 12 < copy["psnr"] < 30 and black["psnr"] < copy["psnr"] and black["ssim"] < 0.1 < copy["ssim"] < 0.9


def test_the_dataset_flag_names_an_embedded_dataset_only(tmp_path):
    with pytest.raises(ValueError, match="--dataset textures names an embedded dataset"):
        validate(micro_config(tmp_path, dataset="textures", data_dir=str(tmp_path)))
