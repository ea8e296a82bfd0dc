import pytest
import torch

from video_diffusion.diffusion.masks import (check_mask_config, frames_mask, parse_mask_range, prediction_mask,
                                     sample_train_mask, unconditional_mask)


def draw(n, seq_len=10, k=4, p=0.25, mask_range=(0, 10), seed=0):
    return torch.stack([sample_train_mask(seq_len, k, p, mask_range, torch.Generator().manual_seed(seed * 100003 + i))
                        for i in range(n)])


def test_kept_count_is_within_1_to_K_and_frames_distinct():
    masks = draw(2000, k=4, p=0.0)
    counts = masks.sum(1)
    assert counts.min() == 1 and counts.max() == 4
    # every k in 1..K occurs with roughly equal frequency (uniform k)
    freq = torch.bincount(counts.long(), minlength=5)[1:].float() / len(masks)
    assert torch.all((freq - 0.25).abs() < 0.04), freq
    assert set(masks.unique().tolist()) <= {0.0, 1.0}  # distinct frames: a 0/1 mask with k ones


def test_kept_frames_stay_inside_mask_range():
    masks = draw(1000, seq_len=10, k=3, p=0.0, mask_range=(2, 6))
    assert masks[:, :2].sum() == 0 and masks[:, 6:].sum() == 0
    assert masks[:, 2:6].sum(0).min() > 0  # every allowed frame gets used


def test_unconditional_rate_within_tolerance():
    n, p = 4000, 0.3
    masks = draw(n, p=p, seed=1)
    rate = (masks.sum(1) == 0).float().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(rate - p) < 4 * sigma


def test_mask_depends_only_on_generator():
    a = sample_train_mask(8, 3, 0.2, (0, 8), torch.Generator().manual_seed(7))
    b = sample_train_mask(8, 3, 0.2, (0, 8), torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_evaluation_masks():
    assert prediction_mask(2, 5, 2).tolist() == [[1, 1, 0, 0, 0]] * 2
    assert frames_mask(1, 6, [0, 3, 5]).tolist() == [[1, 0, 0, 1, 0, 1]]
    assert unconditional_mask(3, 4).sum() == 0


def test_bad_mask_settings_name_the_flag():
    with pytest.raises(ValueError, match="--max_num_mask_frames"):
        check_mask_config(8, 8, (0, 8), 0.1)
    with pytest.raises(ValueError, match="--max_num_mask_frames"):
        check_mask_config(8, 4, (0, 3), 0.1)
    with pytest.raises(ValueError, match="--uncondition_rate"):
        check_mask_config(8, 2, (0, 8), 1.5)
    with pytest.raises(ValueError, match="--mask_range"):
        parse_mask_range("5,2", 8)
    with pytest.raises(ValueError, match="--mask_range"):
        parse_mask_range("0,9", 8)
    with pytest.raises(ValueError, match="--cond_frames"):
        frames_mask(1, 4, [0, 4])
    with pytest.raises(ValueError, match="--num_cond_frames"):
        prediction_mask(1, 4, 4)
