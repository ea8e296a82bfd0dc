import math

import pytest
import torch

from video_diffusion.diffusion.gaussian_diffusion import (GaussianDiffusion, LossType, ModelMeanType, ModelVarType,
                                                get_named_beta_schedule)


def make(mean=ModelMeanType.EPSILON, var=ModelVarType.FIXED_LARGE, loss=LossType.MSE, steps=100):
    return GaussianDiffusion(betas=get_named_beta_schedule("linear", steps), model_mean_type=mean,
                             model_var_type=var, loss_type=loss)


class FrameModel(torch.nn.Module):
    """A toy network whose output on chosen frames can be overwritten with garbage."""

    def __init__(self, out_mult=1, garbage_frames=None, garbage=1e3):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.out_mult, self.garbage_frames, self.garbage = out_mult, garbage_frames, garbage
        self.seen_mask = None

    def forward(self, x, t, obs_mask=None):
        self.seen_mask = obs_mask
        out = torch.cat([self.w * x] * self.out_mult, dim=1)
        if self.out_mult == 2:
            out[:, x.shape[1]:] = torch.tanh(self.w * x)
        if self.garbage_frames is not None:
            g = self.garbage_frames[:, None, :, None, None].bool()
            out = torch.where(g, torch.full_like(out, self.garbage), out)
        return out


CASES = [(m, v) for m in ModelMeanType for v in (ModelVarType.FIXED_LARGE, ModelVarType.LEARNED_RANGE)]


@pytest.mark.parametrize("mean,var", CASES)
def test_loss_ignores_model_output_on_observed_frames(mean, var):
    d = make(mean, var, LossType.RESCALED_MSE)
    learned = var == ModelVarType.LEARNED_RANGE
    x0 = torch.rand(3, 2, 5, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 40, 99])
    obs = torch.tensor([[1, 0, 0, 0, 0], [1, 0, 1, 0, 1], [0, 0, 0, 0, 0]], dtype=torch.float32)
    clean = d.training_losses(FrameModel(2 if learned else 1), x0, t, obs_mask=obs, noise=noise)
    dirty = d.training_losses(FrameModel(2 if learned else 1, garbage_frames=obs), x0, t, obs_mask=obs, noise=noise)
    for key in clean:
        torch.testing.assert_close(clean[key], dirty[key])
    # ...but garbage on a generated frame does change it
    gen = torch.zeros_like(obs)
    gen[:, 3] = 1
    changed = d.training_losses(FrameModel(2 if learned else 1, garbage_frames=gen), x0, t, obs_mask=obs, noise=noise)
    assert (changed["mse"] > clean["mse"] * 10).all()
    assert set(clean) == ({"loss", "mse", "vb"} if learned else {"loss", "mse"})


def test_observed_frames_enter_the_network_clean_and_mask_is_passed():
    d = make()
    x0 = torch.rand(2, 1, 4, 2, 2)
    obs = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.float32)
    seen = {}

    def model(x, t, obs_mask=None):
        seen["x"], seen["mask"] = x, obs_mask
        return torch.zeros_like(x)

    d.training_losses(model, x0, torch.tensor([99, 99]), obs_mask=obs)
    assert torch.equal(seen["x"][0, :, [0, 3]], x0[0, :, [0, 3]])
    assert not torch.allclose(seen["x"][0, :, 1], x0[0, :, 1])
    assert torch.equal(seen["mask"], obs)


def test_mse_is_normalised_by_the_number_of_generated_frames():
    # x_start prediction with output 0: per-element error x0^2; frame f of video v holds value f+1
    d = make(ModelMeanType.START_X)
    x0 = torch.arange(1, 5, dtype=torch.float32)[None, None, :, None, None].expand(2, 3, 4, 2, 2) / 4
    obs = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    losses = d.training_losses(lambda x, t, obs_mask=None: torch.zeros_like(x), x0, torch.tensor([5, 5]), obs_mask=obs)
    v = (torch.arange(1, 5) / 4) ** 2
    torch.testing.assert_close(losses["mse"], torch.stack([v[1:].mean(), v[3]]))


def test_hybrid_loss_is_finite_and_vb_is_masked_at_every_t():
    d = make(ModelMeanType.EPSILON, ModelVarType.LEARNED_RANGE, LossType.RESCALED_MSE, steps=1000)
    torch.manual_seed(0)
    x0 = torch.rand(6, 3, 4, 4, 4) * 2 - 1
    t = torch.tensor([0, 1, 2, 500, 998, 999])
    obs = torch.tensor([[1, 0, 0, 0]] * 6, dtype=torch.float32)
    model = FrameModel(2)
    losses = d.training_losses(model, x0, t, obs_mask=obs)
    assert torch.isfinite(losses["loss"]).all() and torch.isfinite(losses["vb"]).all()
    assert (losses["vb"] >= 0).all()
    losses["loss"].sum().backward()
    assert torch.isfinite(model.w.grad)


def test_vb_trains_only_the_variance():
    # the VB term must not push the mean: its gradient w.r.t. the mean output is zero
    d = make(ModelMeanType.EPSILON, ModelVarType.LEARNED_RANGE, LossType.RESCALED_MSE)
    x0 = torch.rand(2, 1, 3, 2, 2)
    mean_out = torch.zeros(2, 1, 3, 2, 2, requires_grad=True)
    var_out = torch.zeros(2, 1, 3, 2, 2, requires_grad=True)
    losses = d.training_losses(lambda x, t, obs_mask=None: torch.cat([mean_out, var_out], 1), x0,
                               torch.tensor([3, 50]))
    losses["vb"].sum().backward()
    assert mean_out.grad is None or torch.count_nonzero(mean_out.grad) == 0
    assert torch.count_nonzero(var_out.grad) > 0


def test_all_observed_video_is_a_clear_error_not_nan():
    d = make()
    x0 = torch.zeros(2, 1, 3, 2, 2)
    with pytest.raises(ValueError, match="observes every frame"):
        d.training_losses(lambda x, t, obs_mask=None: x, x0, torch.tensor([1, 1]), obs_mask=torch.ones(2, 3))


def test_wrong_output_channels_is_a_clear_error():
    d = make(var=ModelVarType.LEARNED_RANGE)
    with pytest.raises(ValueError, match="learned-sigma"):
        d.training_losses(lambda x, t, obs_mask=None: x, torch.zeros(1, 3, 2, 2, 2), torch.tensor([1]))


def test_rescaled_vb_scales_with_timesteps():
    x0 = torch.rand(1, 1, 2, 2, 2)
    noise = torch.randn_like(x0)
    model = FrameModel(2)
    plain = make(var=ModelVarType.LEARNED_RANGE, loss=LossType.MSE)
    rescaled = make(var=ModelVarType.LEARNED_RANGE, loss=LossType.RESCALED_MSE)
    a = plain.training_losses(model, x0, torch.tensor([10]), noise=noise)["vb"]
    b = rescaled.training_losses(model, x0, torch.tensor([10]), noise=noise)["vb"]
    torch.testing.assert_close(b, a * 100 / 1000)
    assert math.isfinite(a.item())
