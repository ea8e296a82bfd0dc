import numpy as np
import pytest
import torch

from video_diffusion.diffusion.gaussian_diffusion import (GaussianDiffusion, LossType, ModelMeanType, ModelVarType,
                                                get_named_beta_schedule)
from video_diffusion.diffusion.respace import SpacedDiffusion, space_timesteps


def make(schedule="linear", steps=100, mean=ModelMeanType.EPSILON, var=ModelVarType.FIXED_LARGE):
    return GaussianDiffusion(betas=get_named_beta_schedule(schedule, steps), model_mean_type=mean,
                             model_var_type=var, loss_type=LossType.MSE)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedules_are_valid_and_monotone(schedule):
    betas = get_named_beta_schedule(schedule, 1000)
    assert betas.shape == (1000,) and (betas > 0).all() and (betas < 1).all()
    abar = np.cumprod(1 - betas)
    assert (np.diff(abar) < 0).all()
    assert abar[0] > 0.99 and abar[-1] < 1e-3


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("shift", [0.5, 2.0, 4.0])
def test_a_shifted_schedule_lowers_every_steps_log_snr_by_2_log_shift(schedule, shift):
    def logsnr(betas):
        abar = np.cumprod(1 - betas)
        return np.log(abar / (1 - abar))

    base, shifted = get_named_beta_schedule(schedule, 1000), get_named_beta_schedule(schedule, 1000, shift)
    assert (shifted > 0).all() and (shifted <= 0.999).all() and (np.diff(np.cumprod(1 - shifted)) < 0).all()
    # the cosine schedule's last betas are clipped at 0.999 in both, so compare before the clip bites
    live = (base < 0.999) & (shifted < 0.999)
    live[np.argmin(live) if not live.all() else len(live):] = False
    assert live.sum() > 900
    np.testing.assert_allclose((logsnr(base) - logsnr(shifted))[live], 2 * np.log(shift), rtol=0, atol=1e-6)
    assert np.array_equal(get_named_beta_schedule(schedule, 1000, 1.0), base)


def test_schedule_shift_must_be_positive_and_names_its_flag():
    from video_diffusion.config import Config, apply_overrides, validate
    with pytest.raises(ValueError, match="--schedule_shift"):
        validate(apply_overrides(Config(), {"schedule_shift": 0.0}))


def test_degenerate_linear_schedule_is_an_error():
    # the scaled linear schedule reaches beta = 1 (alpha_bar = 0) at 20 steps
    with pytest.raises(ValueError, match="--diffusion_steps"):
        make(steps=20)


def test_unknown_schedule_names_the_flag():
    with pytest.raises(ValueError, match="--noise_schedule"):
        get_named_beta_schedule("quadratic", 10)


def test_q_sample_moments_match_closed_form():
    d = make(steps=50)
    x0 = torch.rand(1, 2, 3, 4, 4) * 2 - 1
    for step in (0, 10, 49):
        t = torch.full((20000,), step)
        xt = d.q_sample(x0.expand(20000, -1, -1, -1, -1), t)
        abar = np.prod(1 - d.betas[: step + 1])
        torch.testing.assert_close(xt.mean(0), (np.sqrt(abar) * x0[0]).float(), atol=0.03, rtol=0)
        torch.testing.assert_close(xt.var(0), torch.full_like(x0[0], 1 - abar), atol=0.03, rtol=0.05)
        mean, var, _ = d.q_mean_variance(x0, t[:1])
        torch.testing.assert_close(mean, (np.sqrt(abar) * x0).float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var, torch.full_like(x0, 1 - abar), rtol=1e-5, atol=1e-6)


def test_posterior_matches_closed_form():
    d = make(steps=30)
    betas = d.betas
    x0, xt = torch.randn(2, 1, 2, 2, 2), torch.randn(2, 1, 2, 2, 2)
    for step in (1, 7, 29):
        abar_t = np.prod(1 - betas[: step + 1])
        abar_prev = np.prod(1 - betas[:step])
        var = betas[step] * (1 - abar_prev) / (1 - abar_t)
        mean = (np.sqrt(abar_prev) * betas[step] / (1 - abar_t)) * x0 \
            + (np.sqrt(1 - betas[step]) * (1 - abar_prev) / (1 - abar_t)) * xt
        m, v, logv = d.q_posterior_mean_variance(x0, xt, torch.full((2,), step))
        torch.testing.assert_close(m, mean.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v, torch.full_like(xt, var), rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(logv, torch.full_like(xt, np.log(var)), rtol=1e-5, atol=1e-6)


def test_posterior_is_the_bayes_posterior():
    # q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): check against the product of Gaussians
    d = make(steps=30)
    step = 9
    a_t, abar_prev = 1 - d.betas[step], np.prod(1 - d.betas[:step])
    x0, xt = 0.3, -0.7
    prec = a_t / d.betas[step] + 1 / (1 - abar_prev)
    mean = (np.sqrt(a_t) * xt / d.betas[step] + np.sqrt(abar_prev) * x0 / (1 - abar_prev)) / prec
    m, v, _ = d.q_posterior_mean_variance(torch.full((1, 1, 1, 1, 1), x0), torch.full((1, 1, 1, 1, 1), xt),
                                          torch.tensor([step]))
    assert m.item() == pytest.approx(mean, rel=1e-5)
    assert v.item() == pytest.approx(1 / prec, rel=1e-5)


def test_eps_xstart_v_conversions_invert():
    d = make(steps=100)
    x0, eps = torch.randn(3, 2, 4, 3, 3), torch.randn(3, 2, 4, 3, 3)
    t = torch.tensor([0, 50, 99])
    xt = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.predict_xstart_from_eps(xt, t, eps), x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(d.predict_eps_from_xstart(xt, t, x0), eps, atol=2e-3, rtol=1e-3)
    v = d.get_v(x0, eps, t)
    torch.testing.assert_close(d.predict_xstart_from_v(xt, t, v), x0, atol=1e-5, rtol=1e-5)


def test_every_parameterisation_recovers_the_true_posterior_mean():
    x0, eps = torch.rand(2, 1, 3, 4, 4) * 2 - 1, torch.randn(2, 1, 3, 4, 4)
    t = torch.tensor([5, 60])
    for mean_type in ModelMeanType:
        d = make(steps=100, mean=mean_type)
        xt = d.q_sample(x0, t, eps)
        output = {ModelMeanType.EPSILON: eps, ModelMeanType.START_X: x0, ModelMeanType.V: d.get_v(x0, eps, t)}[mean_type]
        out = d.output_to_mean_variance(output, xt, t, clip_denoised=False)
        true_mean, _, _ = d.q_posterior_mean_variance(x0, xt, t)
        torch.testing.assert_close(out["pred_xstart"], x0, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(out["mean"], true_mean, atol=1e-3, rtol=1e-3)


def test_variance_types():
    d_small, d_large, d_learn = (make(steps=50, var=v) for v in ModelVarType)
    x = torch.zeros(1, 1, 1, 1, 1)
    t = torch.tensor([10])
    small = d_small.output_to_mean_variance(x, x, t)["variance"].item()
    large = d_large.output_to_mean_variance(x, x, t)["variance"].item()
    assert small == pytest.approx(d_small.posterior_variance[10], rel=1e-5)
    assert large == pytest.approx(d_small.betas[10], rel=1e-5)
    # learned range: -1 -> posterior variance, +1 -> beta
    lo = d_learn.output_to_mean_variance(torch.cat([x, -torch.ones_like(x)], 1), x, t)["variance"].item()
    hi = d_learn.output_to_mean_variance(torch.cat([x, torch.ones_like(x)], 1), x, t)["variance"].item()
    assert lo == pytest.approx(small, rel=1e-4) and hi == pytest.approx(large, rel=1e-4)


@pytest.mark.parametrize("spec,count", [("ddim10", 10), ("25", 25), ("10,5", 15), ("100", 100)])
def test_space_timesteps_counts(spec, count):
    kept = space_timesteps(100, spec)
    assert len(kept) == count and min(kept) == 0 and max(kept) < 100


def test_space_timesteps_errors_name_the_flag():
    with pytest.raises(ValueError, match="--timestep_respacing"):
        space_timesteps(100, "ddim14")  # strides give 15 or 13, never 14
    with pytest.raises(ValueError, match="--timestep_respacing"):
        space_timesteps(100, "fast")
    with pytest.raises(ValueError, match="--timestep_respacing"):
        space_timesteps(100, "200")


def test_respaced_process_equals_base_at_kept_timesteps():
    kwargs = dict(betas=get_named_beta_schedule("cosine", 200), model_mean_type=ModelMeanType.EPSILON,
                  model_var_type=ModelVarType.FIXED_SMALL, loss_type=LossType.MSE)
    base = GaussianDiffusion(**kwargs)
    spaced = SpacedDiffusion(space_timesteps(200, "ddim20"), **kwargs)
    kept = spaced.timestep_map
    assert spaced.num_timesteps == 20
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12)
    x0, eps = torch.randn(4, 1, 2, 2, 2), torch.randn(4, 1, 2, 2, 2)
    idx = torch.tensor([0, 3, 10, 19])
    torch.testing.assert_close(spaced.q_sample(x0, idx, eps), base.q_sample(x0, torch.tensor(kept)[idx], eps))
    # the network is shown the base process's timesteps
    seen = {}

    def model(x, t, obs_mask=None):
        seen["t"] = t
        return torch.zeros_like(x)

    spaced.training_losses(model, x0, idx)
    assert seen["t"].tolist() == [kept[i] for i in idx.tolist()]


def test_a_shifted_schedule_trains_and_its_checkpoint_samples_on_the_same_schedule(tmp_path):
    from conftest import loop_for, micro_config
    from video_diffusion.build import create_diffusion
    from video_diffusion.checkpoints import find_latest
    from video_diffusion.sampling.loading import load_for_sampling

    cfg = micro_config(tmp_path, schedule_shift=3.0, max_steps=2, save_interval=2)
    loop = loop_for(cfg)
    loop.run()
    stored, _, _ = load_for_sampling(find_latest(cfg.train.log_dir))
    expected = np.cumprod(1 - get_named_beta_schedule(cfg.diffusion.noise_schedule, cfg.diffusion.diffusion_steps, 3.0))
    np.testing.assert_array_equal(loop.diffusion.alphas_cumprod, expected)
    np.testing.assert_array_equal(create_diffusion(stored).alphas_cumprod, expected)
    assert not np.allclose(expected, np.cumprod(1 - get_named_beta_schedule(cfg.diffusion.noise_schedule,
                                                                             cfg.diffusion.diffusion_steps)))
