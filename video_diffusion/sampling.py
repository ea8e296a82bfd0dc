"""
Samplers: small functions over a diffusion process and a network.

One loop serves every task. ``obs_mask`` [N, T] marks the given frames and ``x_known``
holds them; how they condition the model is the ``conditioning`` option:

- "mask": the model was trained with the random frame mask. Given frames stay clean in
  x_t at every step and the model is told which they are (the method of this project).
- "replacement": for models trained without the mask (RaMViD's baseline, "reconstruction
  by replacement"). The model sees an unconditional problem; at each step the given
  frames are noised to the current level and pasted in, and with ``resample_steps`` R > 1
  each step is repeated R times, re-noising x_{t-1} back to x_t in between.

Classifier-free guidance on the frame conditioning (``guidance_scale`` w) mixes the
prediction given the frames with the prediction given none:
    out = out_uncond + w * (out_cond - out_uncond),
so w = 1 is plain conditional sampling (and skips the second pass), w > 1 follows the
given frames more strongly, w = 0 ignores them.

Randomness is per video: ``generators`` holds one generator per video, so a video's
result depends on its own seed only, not on the batch it shares or the number of ranks.
"""

from typing import Callable, Optional, Sequence

import torch

from .gaussian_diffusion import GaussianDiffusion, frames_to_elements

SAMPLERS = ("ddpm", "ddim")
CONDITIONINGS = ("mask", "replacement")


def randn_per_video(generators: Sequence[torch.Generator], shape, device) -> torch.Tensor:
    """Standard normal noise [N, *shape], row i drawn from generators[i]."""
    return torch.stack([torch.randn(shape, generator=g, device=g.device).to(device) for g in generators])


def _guided_output(diffusion, model, x, t, obs, x_known, conditioning, guidance_scale, model_kwargs, noise_fn):
    """The network output at (x, t), with the frame conditioning and guidance applied."""
    kwargs = model_kwargs or {}
    zeros = torch.zeros_like(obs)
    if conditioning == "replacement":
        return model(x, diffusion.model_timesteps(t), obs_mask=zeros, **kwargs)
    cond = model(x, diffusion.model_timesteps(t), obs_mask=obs, **kwargs)
    if guidance_scale == 1.0 or not obs.any():
        return cond
    # The unconditional pass must not see the given frames clean: noise them to level t.
    observed = frames_to_elements(obs).bool()
    x_uncond = torch.where(observed, diffusion.q_sample(x_known, t, noise_fn()), x)
    uncond = model(x_uncond, diffusion.model_timesteps(t), obs_mask=zeros, **kwargs)
    c = x.shape[1]
    mean = uncond[:, :c] + guidance_scale * (cond[:, :c] - uncond[:, :c])
    return torch.cat([mean, cond[:, c:]], dim=1)  # a learned variance comes from the conditional pass


def _step(diffusion, out, x, t, sampler, eta, noise):
    """One reverse step x_t -> x_{t-1} from the network's mean/variance prediction."""
    nonzero = (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))
    if sampler == "ddpm":
        return out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
    # DDIM (Song et al. 2021), eq. 12; eta = 0 is deterministic, eta = 1 matches DDPM's variance.
    eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
    abar = diffusion.extract("alphas_cumprod", t, x.ndim)
    abar_prev = diffusion.extract("alphas_cumprod_prev", t, x.ndim)
    sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    mean = out["pred_xstart"] * torch.sqrt(abar_prev) + torch.sqrt((1 - abar_prev - sigma ** 2).clamp(min=0)) * eps
    return mean + nonzero * sigma * noise


def sample(diffusion: GaussianDiffusion, model: Callable, shape, generators: Sequence[torch.Generator], *,
           obs_mask: Optional[torch.Tensor] = None, x_known: Optional[torch.Tensor] = None,
           sampler: str = "ddpm", eta: float = 0.0, conditioning: str = "mask", resample_steps: int = 1,
           guidance_scale: float = 1.0, clip_denoised: bool = True, model_kwargs=None,
           callback: Optional[Callable] = None, progress: bool = False, device=None) -> torch.Tensor:
    """
    Generate videos, holding the given frames fixed.

    :param diffusion: the (possibly respaced) diffusion process.
    :param model: the network, called as model(x, t, obs_mask=..., **model_kwargs).
    :param shape: (N, C, T, H, W).
    :param generators: one torch.Generator per video (its own seed).
    :param obs_mask: [N, T], 1 = given frame; None = unconditional.
    :param x_known: [N, C, T, H, W] holding the given frames (other frames ignored).
    :param sampler: "ddpm" (ancestral) or "ddim".
    :param eta: DDIM noise scale (0 = deterministic).
    :param conditioning: "mask" or "replacement" (see the module docstring).
    :param resample_steps: R, repetitions of each step under replacement (1 = plain replacement).
    :param guidance_scale: w of the frame guidance (1 = none).
    :param callback: called after every step with dict(x, t, pred_xstart, i).
    :param progress: show a tqdm bar over the steps.
    :return: [N, C, T, H, W] videos in [-1, 1]; given frames equal x_known exactly.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"--sampler must be one of {SAMPLERS}, got {sampler!r}")
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
    if resample_steps < 1:
        raise ValueError(f"--resample_steps must be >= 1, got {resample_steps}")
    if resample_steps > 1 and conditioning != "replacement":
        raise ValueError("--resample_steps > 1 applies to replacement conditioning only")
    if guidance_scale != 1.0 and conditioning != "mask":
        raise ValueError("--guidance_scale needs a model trained with the frame mask (conditioning 'mask')")
    n = shape[0]
    if len(generators) != n:
        raise ValueError(f"need one generator per video: {n} videos, {len(generators)} generators")
    device = device or generators[0].device
    obs = torch.zeros(n, shape[2], device=device) if obs_mask is None else obs_mask.to(device).float()
    if obs.any() and x_known is None:
        raise ValueError("obs_mask marks given frames but x_known is None")
    x_known = torch.zeros(shape, device=device) if x_known is None else x_known.to(device).float()
    observed = frames_to_elements(obs).bool()

    def noise_fn():
        return randn_per_video(generators, shape[1:], device)

    x = noise_fn()
    steps = list(range(diffusion.num_timesteps))[::-1]
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="sampling", leave=False)
    for i in steps:
        t = torch.full((n,), i, device=device, dtype=torch.long)
        for r in range(resample_steps):
            if conditioning == "mask":
                x = torch.where(observed, x_known, x)
            else:
                x = torch.where(observed, diffusion.q_sample(x_known, t, noise_fn()), x)
            with torch.inference_mode():
                output = _guided_output(diffusion, model, x, t, obs, x_known, conditioning, guidance_scale,
                                        model_kwargs, noise_fn)
                out = diffusion.output_to_mean_variance(output, x, t, clip_denoised)
            x_prev = _step(diffusion, out, x, t, sampler, eta, noise_fn())
            if r < resample_steps - 1 and i > 0:
                # back to level t: q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t)
                beta = diffusion.extract("betas", t, x.ndim)
                x = torch.sqrt(1 - beta) * x_prev + torch.sqrt(beta) * noise_fn()
            else:
                x = x_prev
                break
        if callback is not None:
            callback({"x": x, "t": t, "pred_xstart": out["pred_xstart"], "i": i})
    return torch.where(observed, x_known, x.clamp(-1, 1))


def rollout(sample_window: Callable, x_context: torch.Tensor, num_context: int, num_frames: int, seq_len: int,
            context_frames: int) -> torch.Tensor:
    """
    Generate ``num_frames`` frames window by window, each window conditioned on the last
    ``context_frames`` frames available (the given ones first, then generated ones).

    :param sample_window: fn(x_known [N, C, seq_len, H, W], obs_mask [N, seq_len], window index) -> window.
    :param x_context: [N, C, >= num_context, H, W] with the given frames first.
    :param num_context: number of given frames at the start (0 = start unconditionally).
    :param num_frames: L, total frames to return (given ones included).
    :param seq_len: the model's window.
    :param context_frames: c, frames each later window is conditioned on (1 <= c < seq_len).
    :return: [N, C, L, H, W].
    """
    if not 1 <= context_frames < seq_len:
        raise ValueError(f"--context_frames must be in [1, seq_len={seq_len}), got {context_frames}: "
                         "a window must hold its context and at least one new frame")
    if num_context > seq_len - 1:
        raise ValueError(f"{num_context} given frames do not leave room in a window of {seq_len}")
    n, c, _, h, w = x_context.shape
    video = x_context[:, :, :num_context]
    window_index = 0
    while video.shape[2] < num_frames:
        ctx = video[:, :, -context_frames:] if window_index else video
        k = ctx.shape[2]
        x_known = torch.zeros(n, c, seq_len, h, w, device=x_context.device, dtype=x_context.dtype)
        x_known[:, :, :k] = ctx
        obs = torch.zeros(n, seq_len, device=x_context.device)
        obs[:, :k] = 1
        window = sample_window(x_known, obs, window_index)
        video = torch.cat([video, window[:, :, k:]], dim=2)
        window_index += 1
    return video[:, :, :num_frames]
