"""Per-frame noise levels (Diffusion Forcing, Chen et al. 2024) as a generalisation of the frame
mask: given frames are level 0, the others may draw their own levels; with one shared level per
video everything reduces to today's mask training."""

import pytest
import torch

from conftest import loop_for, make, micro_config
from video_diffusion.build import create_diffusion, create_model
from video_diffusion.config import apply_overrides, validate
from video_diffusion.diffusion.masks import training_randomness
from video_diffusion.diffusion.timestep_sampler import create_timestep_sampler


def test_the_frame_level_network_embeds_each_frames_level_and_given_frames_at_0():
    model = make(frame_levels=True)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 16, 16)
    mask = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    t = torch.tensor([[700, 300, 300, 300], [300, 300, 300, 300]])
    with torch.no_grad():
        out = model(x, t, obs_mask=mask)
        # a given frame's own entry is ignored: it is level 0
        same = model(x, torch.tensor([[0, 300, 300, 300], [300, 300, 300, 300]]), obs_mask=mask)
        # a generated frame's entry counts, for its own frame first of all
        other = model(x, torch.tensor([[700, 300, 300, 900], [300, 300, 300, 300]]), obs_mask=mask)
        shared = model(x, torch.tensor([300, 300]), obs_mask=mask)
    assert torch.equal(out, same) and torch.equal(out, shared)
    assert not torch.allclose(other[0], out[0]) and torch.equal(other[1], out[1])
    with pytest.raises(ValueError, match="frame_levels"):
        make()(x, t, obs_mask=mask)


def test_shared_levels_without_given_frames_are_todays_network():
    plain, levels = make(), make(frame_levels=True)
    levels.load_state_dict(plain.state_dict())  # the same parameters: frame_levels adds none
    torch.manual_seed(2)
    x, t, mask = torch.randn(3, 3, 4, 16, 16), torch.tensor([5, 500, 990]), torch.zeros(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(levels(x, t, obs_mask=mask), plain(x, t, obs_mask=mask), rtol=0, atol=1e-6)


def test_one_shared_level_per_video_gives_todays_loss_bit_for_bit():
    cfg = micro_config(frame_levels=True, predict_xstart=True)
    model, diffusion = create_model(cfg), create_diffusion(cfg)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    x, noise = torch.randn(3, 3, 4, 16, 16), torch.randn(3, 3, 4, 16, 16)
    t, mask = torch.tensor([1, 40, 95]), torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 1]])
    today = diffusion.training_losses(model, x, t, obs_mask=mask, noise=noise)
    per_frame = diffusion.training_losses(model, x, t[:, None].expand(3, 4), obs_mask=mask, noise=noise)
    for key in today:
        assert torch.equal(today[key], per_frame[key]), key
    # and a frame's own level is the one it is noised to: another level on frame 2 changes the loss
    moved = t[:, None].expand(3, 4).clone()
    moved[1, 2] = 99
    changed = diffusion.training_losses(model, x, moved, obs_mask=mask, noise=noise)["loss"]
    assert changed[1] != today["loss"][1] and torch.equal(changed[[0, 2]], today["loss"][[0, 2]])


def test_independent_levels_are_drawn_after_todays_randomness():
    sampler = create_timestep_sampler("uniform", 1000)
    args = (0, 7, 0, (64, 3, 8, 4, 4), 8, 3, 0.25, (0, 8), sampler, torch.device("cpu"))
    masks, t, weights, noise, self_cond = training_randomness(*args)
    assert self_cond is None  # no self-conditioning draw at its rate 0
    assert t.shape == (64,)
    for rate in (0.0, 0.5, 1.0):
        m2, t2, w2, n2, _ = training_randomness(*args, independent_noise_rate=rate)
        assert torch.equal(m2, masks) and torch.equal(w2, weights) and torch.equal(n2, noise)
        if rate == 0:
            assert torch.equal(t2, t)
            continue
        assert t2.shape == (64, 8) and t2.min() >= 0 and t2.max() < 1000
        shared = (t2 == t[:, None]).all(dim=1)
        assert rate == 1.0 and not shared.any() or 10 < shared.sum() < 54  # a coin per video
    again = training_randomness(*args, independent_noise_rate=0.5)[1]
    assert torch.equal(again, training_randomness(*args, independent_noise_rate=0.5)[1])


@pytest.mark.parametrize("fields, match", [
    (dict(independent_noise_rate=0.5), "--frame_levels"),
    (dict(independent_noise_rate=1.5, frame_levels=True), "--independent_noise_rate"),
    (dict(independent_noise_rate=0.5, frame_levels=True, min_snr_gamma=5.0), "--min_snr_gamma"),
    (dict(independent_noise_rate=0.5, frame_levels=True, learn_sigma=True), "--learn_sigma"),
])
def test_impossible_combinations_name_their_flags(fields, match):
    with pytest.raises(ValueError, match=match):
        validate(micro_config(**fields))


def test_training_with_independent_levels_round_trips_and_samples(tmp_path):
    from video_diffusion.checkpoints import find_latest
    from video_diffusion.sampling.loading import load_for_sampling

    cfg = micro_config(tmp_path, frame_levels=True, independent_noise_rate=0.5, predict_xstart=True,
                       max_steps=3, save_interval=3)
    validate(cfg)
    loop = loop_for(cfg)
    loop.run()
    stored, model, _ = load_for_sampling(find_latest(cfg.train.log_dir), use_ema=False)
    assert model.frame_levels and stored.mask.independent_noise_rate == 0.5
    x, mask = torch.randn(2, 3, 4, 16, 16), torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    with torch.no_grad():
        for t in (torch.tensor([5, 50]), torch.tensor([[0, 5, 60, 900], [1, 2, 3, 4]])):
            assert torch.equal(model(x, t, obs_mask=mask), loop.model.eval()(x, t, obs_mask=mask))
