"""
The denoiser: the seam between the network and every sampler.

``make_denoiser`` builds ``D(x, i)`` from the diffusion process, the network, the given
frames and their mask, the guidance scale and the model kwargs: the network's prediction of
the clean video (and of the noise, and of the reverse-step Gaussian) at step i of the
(respaced) process. It pastes the given frames, maps step indices to the network's
timesteps, applies guidance and converts the network's parameterisation; it is the only
caller of the network while sampling.

How given frames condition the model is the ``conditioning`` option:

- "mask": the model was trained with the random frame mask. Given frames stay clean in
  x_t at every call and the model is told which they are (the method of this project).
- "replacement": for models trained without the mask (RaMViD's baseline, "reconstruction
  by replacement"). The model sees an unconditional problem; at each call the given frames
  are noised to the current level and pasted in. With ``resample_steps`` R > 1 each step
  is repeated R times, re-noising x_{t-1} back to x_t in between (first-order samplers).

Classifier-free guidance on the frame conditioning (``guidance_scale`` w) mixes the
prediction given the frames with the prediction given none:
    out = out_uncond + w * (out_cond - out_uncond),
so w = 1 is plain conditional sampling (and skips the second pass), w > 1 follows the
given frames more strongly, w = 0 ignores them.

A self-conditioned network (``self_condition``) gets, at every call, the x_0 that the previous
call predicted (zeros at the first), its given frames replaced by the given values as in
training; so the denoiser holds that one estimate between calls, and a new sampling run
needs a new denoiser.

Randomness is per video: ``randn_per_video`` draws row i from generators[i], so a video's
result depends on its own seed only, not on the batch it shares or the number of ranks.
"""

from typing import Callable, Dict, Sequence

import torch

from ..diffusion.gaussian_diffusion import GaussianDiffusion, frames_to_elements

CONDITIONINGS = ("mask", "replacement")

Denoiser = Callable[[torch.Tensor, int], Dict[str, torch.Tensor]]


def randn_per_video(generators: Sequence[torch.Generator], shape, device) -> torch.Tensor:
    """Standard normal noise [N, *shape], row i drawn from generators[i]."""
    return torch.stack([torch.randn(shape, generator=g, device=g.device).to(device) for g in generators])


def make_denoiser(diffusion: GaussianDiffusion, model: Callable, x_known: torch.Tensor, obs_mask: torch.Tensor, *,
                  conditioning: str = "mask", guidance_scale: float = 1.0, model_kwargs=None,
                  clip_denoised: bool = True, noise_fn: Callable = None, self_condition: bool = False) -> Denoiser:
    """
    ``D(x, i)``: the network's predictions at step ``i`` of ``diffusion`` for the current
    sample ``x`` (its given frames are replaced here, whatever x holds there).

    :param x_known: [N, C, T, H, W] holding the given frames (other frames ignored).
    :param obs_mask: [N, T] float, 1 = given frame.
    :param noise_fn: () -> fresh noise like x (replacement noises the given frames with it).
    :param self_condition: pass the previous call's x_0 as ``x_self_cond`` (a self-conditioned network).
    :return: a function (x, i) -> dict(pred_xstart, eps, mean, log_variance, x) where x is
        the input the network saw.
    """
    base_kwargs = model_kwargs or {}
    observed = frames_to_elements(obs_mask).bool()
    zeros = torch.zeros_like(obs_mask)
    previous = {}  # self-conditioning: the last call's x_0

    def denoise(x: torch.Tensor, i: int) -> Dict[str, torch.Tensor]:
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        net_t = diffusion.model_timesteps(t)
        kwargs = base_kwargs
        if self_condition:  # zeros only at the first call (a default argument would allocate them every call)
            kwargs = dict(base_kwargs, x_self_cond=previous["x0"] if previous else torch.zeros_like(x))
        with torch.inference_mode():
            if conditioning == "replacement":
                x = torch.where(observed, diffusion.q_sample(x_known, t, noise_fn()), x)
                output = model(x, net_t, obs_mask=zeros, **kwargs)
            else:
                x = torch.where(observed, x_known, x)
                output = model(x, net_t, obs_mask=obs_mask, **kwargs)
                if guidance_scale != 1.0 and obs_mask.any():
                    # the unconditional pass must not see the given frames clean: noise them to level t
                    x_uncond = torch.where(observed, diffusion.q_sample(x_known, t, noise_fn()), x)
                    uncond = model(x_uncond, net_t, obs_mask=zeros, **kwargs)
                    # x_0 is linear in the output's mean part
                    c = x.shape[1]
                    mean = uncond[:, :c] + guidance_scale * (output[:, :c] - uncond[:, :c])
                    output = torch.cat([mean, output[:, c:]], dim=1)  # a learned variance: the conditional pass's
            out = diffusion.output_to_mean_variance(output, x, t, clip_denoised)
            if self_condition:
                x0 = out["pred_xstart"].clamp(-1, 1)  # as in training, whatever clip_denoised says
                previous["x0"] = x0 if conditioning == "replacement" else torch.where(observed, x_known, x0)
            out["eps"] = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
            out["x"] = x
        return out

    return denoise
