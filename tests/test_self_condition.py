"""Self-conditioning (Chen et al. 2022): the network also takes an earlier estimate of x_0; training
feeds half the videos its own first estimate, sampling feeds each step the last step's."""

import pytest
import torch

from conftest import loop_for, make, micro_config
from video_diffusion.build import create_diffusion, create_model
from video_diffusion.config import validate
from video_diffusion.diffusion.masks import training_randomness
from video_diffusion.diffusion.timestep_sampler import create_timestep_sampler
from video_diffusion.sampling.denoiser import make_denoiser


def test_the_network_takes_an_estimate_and_none_means_zeros():
    model = make(self_condition=True)
    torch.manual_seed(1)
    x, t, mask = torch.randn(2, 3, 4, 16, 16), torch.tensor([10, 500]), torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    estimate = torch.randn_like(x)
    with torch.no_grad():
        plain = model(x, t, obs_mask=mask)
        zeros = model(x, t, obs_mask=mask, x_self_cond=torch.zeros_like(x))
        drafted = model(x, t, obs_mask=mask, x_self_cond=estimate)
    assert torch.equal(plain, zeros)
    assert not torch.allclose(plain, drafted)
    with pytest.raises(ValueError, match="without self_condition"):
        make()(x, t, obs_mask=mask, x_self_cond=estimate)
    with pytest.raises(ValueError, match="x_self_cond must have the shape"):
        model(x, t, obs_mask=mask, x_self_cond=estimate[:, :, :2])
    # gradients reach the estimate's input weights (the estimate is an input like any other)
    model.train()
    model(x, t, obs_mask=mask, x_self_cond=estimate).square().mean().backward()
    first = model.input_blocks[0][0].weight.grad
    assert first is not None and first[:, 3:6].abs().sum() > 0  # x (0-2), the estimate (3-5), the mask (6)


def _micro(**fields):
    cfg = micro_config(self_condition=True, predict_xstart=True, **fields)
    validate(cfg)
    model, diffusion = create_model(cfg), create_diffusion(cfg)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model, diffusion


def test_no_video_chosen_is_the_plain_loss_and_chosen_ones_see_their_own_estimate():
    model, diffusion = _micro()
    torch.manual_seed(4)
    x, noise = torch.randn(3, 3, 4, 16, 16).clamp(-1, 1), torch.randn(3, 3, 4, 16, 16)
    t, mask = torch.tensor([5, 60, 95]), torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 1]])
    plain = diffusion.training_losses(model, x, t, obs_mask=mask, noise=noise)
    none_chosen = diffusion.training_losses(model, x, t, obs_mask=mask, noise=noise,
                                            self_cond=torch.tensor([False, False, False]))
    for key in plain:
        assert torch.equal(plain[key], none_chosen[key]), key

    seen = []

    def spy(x_in, t_in, obs_mask=None, x_self_cond=None):
        seen.append((x_in.shape[0], None if x_self_cond is None else x_self_cond.clone()))
        return model(x_in, t_in, obs_mask=obs_mask, x_self_cond=x_self_cond)

    chosen = torch.tensor([False, True, True])
    losses = diffusion.training_losses(spy, x, t, obs_mask=mask, noise=noise, self_cond=chosen)
    # one extra pass, over the two chosen videos only, with a zero estimate; then the whole batch
    assert [n for n, _ in seen] == [2, 3] and not seen[0][1].any()
    given = seen[1][1]
    assert not given[0].any()  # not chosen: zeros
    x_t = torch.where(mask[:, None, :, None, None].bool(), x, diffusion.q_sample(x, t, noise))
    with torch.no_grad():
        own = diffusion.pred_xstart_of(model(x_t, t, obs_mask=mask), x_t, t)
    torch.testing.assert_close(given[2][:, [0, 2]], own[2][:, [0, 2]])  # its own x_0 on generated frames
    assert torch.equal(given[2][:, [1, 3]], x[2][:, [1, 3]])  # the given values on given frames
    assert losses["loss"][0] == plain["loss"][0] and losses["loss"][2] != plain["loss"][2]


def test_the_first_pass_carries_no_gradient():
    model, diffusion = _micro()
    model.train()
    x = torch.randn(2, 3, 4, 16, 16).clamp(-1, 1)
    estimate = diffusion.first_estimate(model, x, torch.tensor([50, 60]), torch.zeros(2, 4),
                                        torch.tensor([True, True]), {})
    assert not estimate.requires_grad and estimate.abs().max() <= 1
    with pytest.raises(ValueError, match="self_cond must have shape"):
        diffusion.first_estimate(model, x, torch.tensor([50, 60]), torch.zeros(2, 4), torch.tensor([True]), {})


def test_the_coin_is_drawn_after_every_other_draw():
    sampler = create_timestep_sampler("uniform", 1000)
    args = (0, 7, 0, (64, 3, 8, 4, 4), 8, 3, 0.25, (0, 8), sampler, torch.device("cpu"))
    masks, t, weights, noise, none = training_randomness(*args)
    masks2, t2, weights2, noise2, chosen = training_randomness(*args, self_condition_rate=0.5)
    assert none is None and chosen.dtype == torch.bool and chosen.shape == (64,)
    for a, b in ((masks, masks2), (t, t2), (weights, weights2), (noise, noise2)):
        assert torch.equal(a, b)
    assert 10 < chosen.sum() < 54
    assert torch.equal(chosen, training_randomness(*args, self_condition_rate=0.5)[4])


def test_each_sampling_step_gets_the_last_steps_estimate_with_the_given_frames():
    model, diffusion = _micro()
    seen = []

    def spy(x_in, t_in, obs_mask=None, x_self_cond=None):
        seen.append(x_self_cond.clone())
        return model(x_in, t_in, obs_mask=obs_mask, x_self_cond=x_self_cond)

    torch.manual_seed(5)
    known, mask = torch.rand(2, 3, 4, 16, 16) * 2 - 1, torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0]])
    denoise = make_denoiser(diffusion, spy, known, mask, self_condition=True)
    first = denoise(torch.randn_like(known), 90)
    denoise(torch.randn_like(known), 80)
    assert not seen[0].any()
    expected = torch.where(mask[:, None, :, None, None].bool(), known, first["pred_xstart"])
    assert torch.equal(seen[1], expected)
    # a denoiser without self-conditioning passes no estimate (the network sees zeros)
    seen.clear()
    make_denoiser(diffusion, lambda x_in, t_in, obs_mask=None, **kw: seen.append(kw) or model(x_in, t_in, obs_mask),
                  known, mask)(known, 90)
    assert seen == [{}]


@pytest.mark.slow
def test_training_round_trips_and_samples(tmp_path):
    from conftest import CPU
    from video_diffusion.checkpoints import find_latest
    from video_diffusion.sampling.generate import generate
    from video_diffusion.sampling.loading import load_for_sampling
    from video_diffusion.sampling.options import SampleOptions
    from video_diffusion.sampling.plan import resolve_plan

    cfg = micro_config(tmp_path, self_condition=True, predict_xstart=True, max_steps=3, save_interval=3)
    validate(cfg)
    loop_for(cfg).run()
    stored, model, _ = load_for_sampling(find_latest(cfg.train.log_dir), use_ema=False)
    assert stored.model.self_condition and model.self_condition
    plan = resolve_plan(stored, SampleOptions(num_samples=2, steps=4, num_cond_frames=1))
    assert plan.self_condition  # the sampler will hand each step the last one's estimate
    calls = []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs.get("x_self_cond")),
                                    with_kwargs=True)
    out = generate(model, plan, CPU)
    assert len(out) == 2 and len(calls) == 4
    assert not calls[0].any() and all(c is not None and c.any() for c in calls[1:])
    for video, gt, mask in out.values():
        assert (video[mask.astype(bool)] == gt[mask.astype(bool)]).all()  # given frames kept exactly

