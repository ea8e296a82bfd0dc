import pytest
import torch

from conftest import SHAPE, X_KNOWN, gens, micro_config
from video_diffusion.build import create_diffusion, create_model
from video_diffusion.diffusion.masks import frames_mask, prediction_mask
from video_diffusion.sampling.generate import rollout, sample


def random_model(cfg):
    torch.manual_seed(0)
    model = create_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()




CFG = micro_config()


def u8(x):
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("sampler,respacing", [("ddpm", "25"), ("ddim", "ddim10")])
@pytest.mark.parametrize("mask", [prediction_mask(3, 4, 1), frames_mask(3, 4, [0, 2])])
@pytest.mark.parametrize("learn_sigma,mean", [(False, {}), (True, {}), (False, {"predict_v": True}),
                                              (True, {"predict_xstart": True})])
def test_given_frames_are_preserved_exactly(sampler, respacing, mask, learn_sigma, mean):
    cfg = micro_config(learn_sigma=learn_sigma, timestep_respacing=respacing, **mean)
    out = sample(create_diffusion(cfg), random_model(cfg), SHAPE, gens(3), obs_mask=mask, x_known=X_KNOWN,
                 sampler=sampler)
    assert out.shape == SHAPE and out.min() >= -1 and out.max() <= 1
    observed = mask.bool()
    assert torch.equal(u8(out).permute(0, 2, 1, 3, 4)[observed], u8(X_KNOWN).permute(0, 2, 1, 3, 4)[observed])
    assert not torch.equal(u8(out).permute(0, 2, 1, 3, 4)[~observed], u8(X_KNOWN).permute(0, 2, 1, 3, 4)[~observed])


def test_ddim_eta0_is_deterministic_and_each_video_depends_only_on_its_seed():
    cfg = micro_config(timestep_respacing="ddim10")
    d, m = create_diffusion(cfg), random_model(cfg)
    mask = prediction_mask(3, 4, 1)
    a = sample(d, m, SHAPE, gens(3), obs_mask=mask, x_known=X_KNOWN, sampler="ddim", eta=0.0)
    b = sample(d, m, SHAPE, gens(3), obs_mask=mask, x_known=X_KNOWN, sampler="ddim", eta=0.0)
    assert torch.equal(a, b)
    # video 1 alone, with its own generator, equals video 1 of the batch (up to the float
    # differences of batch-size-dependent kernels)
    single = sample(d, m, (1,) + SHAPE[1:], gens(3)[1:2], obs_mask=mask[1:2], x_known=X_KNOWN[1:2],
                    sampler="ddim", eta=0.0)
    torch.testing.assert_close(single[0], a[1], atol=2e-4, rtol=1e-4)
    c = sample(d, m, SHAPE, gens(3, seed=1), obs_mask=mask, x_known=X_KNOWN, sampler="ddim", eta=0.0)
    assert not torch.equal(a, c)


def test_unconditional_ddim_moves_the_sample():
    cfg = micro_config(timestep_respacing="ddim10")
    d, m = create_diffusion(cfg), random_model(cfg)
    start = torch.stack([torch.randn(SHAPE[1:], generator=g) for g in gens(3)])
    out = sample(d, m, SHAPE, gens(3), sampler="ddim")
    assert (out - start.clamp(-1, 1)).abs().mean() > 0.05


def test_neutral_guidance_equals_conditional_sampling_and_other_scales_differ():
    cfg = micro_config(timestep_respacing="ddim10")
    d, m = create_diffusion(cfg), random_model(cfg)
    mask = prediction_mask(3, 4, 2)
    kw = dict(obs_mask=mask, x_known=X_KNOWN, sampler="ddim")
    plain = sample(d, m, SHAPE, gens(3), **kw)
    assert torch.equal(sample(d, m, SHAPE, gens(3), guidance_scale=1.0, **kw), plain)
    assert not torch.allclose(sample(d, m, SHAPE, gens(3), guidance_scale=3.0, **kw), plain)


def test_resample_steps_1_equals_plain_replacement():
    cfg = micro_config(timestep_respacing="10")
    d, m = create_diffusion(cfg), random_model(cfg)
    mask = prediction_mask(3, 4, 1)
    got = sample(d, m, SHAPE, gens(3), obs_mask=mask, x_known=X_KNOWN, conditioning="replacement",
                 resample_steps=1, sampler="ddpm")
    # plain replacement written out: noise the known frames to level t, paste, take a DDPM step
    g = gens(3)
    noise = lambda: torch.stack([torch.randn(SHAPE[1:], generator=gi) for gi in g])  # noqa: E731
    observed = mask[:, None, :, None, None].bool()
    x = noise()
    for i in reversed(range(d.num_timesteps)):
        t = torch.full((3,), i)
        x = torch.where(observed, d.q_sample(X_KNOWN, t, noise()), x)
        with torch.no_grad():
            out = d.p_mean_variance(m, x, t, obs_mask=torch.zeros(3, 4))
        x = out["mean"] + (i > 0) * torch.exp(0.5 * out["log_variance"]) * noise()
    expected = torch.where(observed, X_KNOWN, x.clamp(-1, 1))
    torch.testing.assert_close(got, expected)
    more = sample(d, m, SHAPE, gens(3), obs_mask=mask, x_known=X_KNOWN, conditioning="replacement",
                  resample_steps=3, sampler="ddpm")
    assert not torch.allclose(more, got)
    assert torch.equal(u8(more)[:, :, 0], u8(X_KNOWN)[:, :, 0])


def test_long_rollout_returns_L_frames_with_real_context_preserved():
    cfg = micro_config(timestep_respacing="ddim5")
    d, m = create_diffusion(cfg), random_model(cfg)
    g = gens(2)
    windows = []

    def window(x_known, obs, w):
        windows.append(obs[0].tolist())
        return sample(d, m, (2, 3, 4, 16, 16), g, obs_mask=obs, x_known=x_known, sampler="ddim")

    context = torch.rand(2, 3, 11, 16, 16) * 2 - 1
    video = rollout(window, context, num_context=1, num_frames=11, seq_len=4, context_frames=2)
    assert video.shape == (2, 3, 11, 16, 16)
    assert torch.equal(video[:, :, 0], context[:, :, 0])
    # first window: 1 given + 3 new; then 2 context + 2 new each: 1 + 3 + 2 + 2 + 2 = 10 < 11 -> 5 windows
    assert windows[0] == [1, 0, 0, 0] and all(w == [1, 1, 0, 0] for w in windows[1:]) and len(windows) == 5
    with pytest.raises(ValueError, match="--context_frames"):
        rollout(window, context, 1, 11, 4, 4)


def test_bad_sampler_options():
    cfg = micro_config()
    d, m = create_diffusion(cfg), random_model(cfg)
    with pytest.raises(ValueError, match="--sampler"):
        sample(d, m, SHAPE, gens(3), sampler="euler")
    with pytest.raises(ValueError, match="--resample_steps > 1 re-noises.*ddpm or ddim"):
        sample(d, m, SHAPE, gens(3), sampler="dpmpp_2m", conditioning="replacement", resample_steps=2)
    with pytest.raises(ValueError, match="--eta applies to --sampler ddim only"):
        sample(d, m, SHAPE, gens(3), sampler="dpmpp_2s", eta=0.5)
    with pytest.raises(ValueError, match="--resample_steps"):
        sample(d, m, SHAPE, gens(3), resample_steps=2, sampler="ddpm")
    with pytest.raises(ValueError, match="generator"):
        sample(d, m, SHAPE, gens(2), sampler="ddpm")


@pytest.mark.parametrize("sampler,respacing", [("ddpm", "50"), ("ddim", "ddim20"), ("dpmpp_2m", "10"),
                                              ("dpmpp_2m", "karras8"), ("dpmpp_2m", "logsnr8"), ("dpmpp_2s", "6"),
                                              ("dpmpp_2s", "karras5"), ("dpmpp_2s", "logsnr5")])
@pytest.mark.parametrize("mean", [{}, {"predict_xstart": True}, {"predict_v": True}])
@pytest.mark.parametrize("sigma", [{}, {"sigma_small": True}])
def test_an_oracle_denoiser_samples_its_data(sampler, respacing, mean, sigma):
    # Data concentrated on one video x*: the exact denoiser knows x_0 = x*, so every
    # correct sampler, whatever the parameterisation, must end at x*.
    cfg = micro_config(timestep_respacing=respacing, diffusion_steps=200, **mean, **sigma)
    d = create_diffusion(cfg)
    target = torch.rand(2, 3, 4, 8, 8) * 1.6 - 0.8
    base_abar = torch.tensor(create_diffusion(micro_config(diffusion_steps=200)).alphas_cumprod, dtype=torch.float32)

    def oracle(x, t, obs_mask=None):
        abar = base_abar[t].reshape(-1, 1, 1, 1, 1)  # the network sees base-process timesteps
        eps = (x - abar.sqrt() * target) / (1 - abar).sqrt()
        if mean.get("predict_xstart"):
            return target.clone()
        if mean.get("predict_v"):
            return abar.sqrt() * eps - (1 - abar).sqrt() * target
        return eps

    out = sample(d, oracle, target.shape, gens(2), sampler=sampler, eta=1.0 if sampler == "ddim" else 0.0)
    torch.testing.assert_close(out, target, atol=2e-3, rtol=0)
