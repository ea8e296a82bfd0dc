"""
Samplers: small functions over a denoiser.

``make_denoiser`` is the seam between the network and every sampler: from the diffusion
process, the network, the given frames and their mask, the guidance scale and the model
kwargs it builds ``D(x, i)``, the network's prediction of the clean video (and of the
noise, and of the reverse-step Gaussian) at step i of the (respaced) process. It pastes
the given frames, maps step indices to the network's timesteps, applies guidance and
converts the network's parameterisation; it is the only caller of the network while
sampling. A sampler is a function ``(denoiser, x_T, diffusion, noise_fn, callback, **options)
-> x_0`` registered in ``SAMPLERS``; every script takes its choices from that table.

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

The step grid is the respaced process's kept timesteps (``respace.space_timesteps``):
uniform in t, Karras et al.'s sigma spacing (``karrasN``), or even in log-SNR (``logsnrN``).

Randomness is per video: ``generators`` holds one generator per video, so a video's
result depends on its own seed only, not on the batch it shares or the number of ranks.
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch

from .gaussian_diffusion import GaussianDiffusion, frames_to_elements

CONDITIONINGS = ("mask", "replacement")

Denoiser = Callable[[torch.Tensor, int], Dict[str, torch.Tensor]]


def randn_per_video(generators: Sequence[torch.Generator], shape, device) -> torch.Tensor:
    """Standard normal noise [N, *shape], row i drawn from generators[i]."""
    return torch.stack([torch.randn(shape, generator=g, device=g.device).to(device) for g in generators])


def make_denoiser(diffusion: GaussianDiffusion, model: Callable, x_known: torch.Tensor, obs_mask: torch.Tensor, *,
                  conditioning: str = "mask", guidance_scale: float = 1.0, model_kwargs=None,
                  clip_denoised: bool = True, noise_fn: Callable = None) -> Denoiser:
    """
    ``D(x, i)``: the network's predictions at step ``i`` of ``diffusion`` for the current
    sample ``x`` (its given frames are replaced here, whatever x holds there).

    :param x_known: [N, C, T, H, W] holding the given frames (other frames ignored).
    :param obs_mask: [N, T] float, 1 = given frame.
    :param noise_fn: () -> fresh noise like x (replacement noises the given frames with it).
    :return: a function (x, i) -> dict(pred_xstart, eps, mean, log_variance, x) where x is
        the input the network saw.
    """
    kwargs = model_kwargs or {}
    observed = frames_to_elements(obs_mask).bool()
    zeros = torch.zeros_like(obs_mask)

    def denoise(x: torch.Tensor, i: int) -> Dict[str, torch.Tensor]:
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        net_t = diffusion.model_timesteps(t)
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
                    # x_0 is linear in the output's mean part: all of [F, W] for a prior-mean model
                    c = output.shape[1] if diffusion.prior_mean else x.shape[1]
                    mean = uncond[:, :c] + guidance_scale * (output[:, :c] - uncond[:, :c])
                    output = torch.cat([mean, output[:, c:]], dim=1)  # a learned variance: the conditional pass's
            out = diffusion.output_to_mean_variance(output, x, t, clip_denoised)
            out["eps"] = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
            out["x"] = x
        return out

    return denoise


# ---------------------------------------------------------------------- the samplers
def _abar(diffusion, i: int) -> float:
    """alpha-bar of step i; 1 (no noise) below step 0."""
    return float(diffusion.alphas_cumprod[i]) if i >= 0 else 1.0


def _first_order(step: Callable, denoiser: Denoiser, x, diffusion, noise_fn, callback, resample_steps: int = 1):
    """The loop of the one-evaluation-per-step samplers, with RePaint-style resampling (R > 1):
    after a step, x_{t-1} is noised back to level t and the step repeated."""
    for i in reversed(range(diffusion.num_timesteps)):
        for r in range(resample_steps):
            out = denoiser(x, i)
            x_prev = step(out, i)
            if r < resample_steps - 1 and i > 0:
                beta = float(diffusion.betas[i])  # q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t)
                x = math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * noise_fn()
            else:
                x = x_prev
                break
        if callback is not None:
            callback({"x": x, "i": i, "pred_xstart": out["pred_xstart"]})
    return x


def sample_ddpm(denoiser: Denoiser, x, diffusion, noise_fn, callback=None, resample_steps: int = 1):
    """Ancestral sampling: x_{t-1} ~ p(x_{t-1} | x_t), the network's reverse-step Gaussian."""
    def step(out, i):
        return out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise_fn() if i > 0 else out["mean"]
    return _first_order(step, denoiser, x, diffusion, noise_fn, callback, resample_steps)


def sample_ddim(denoiser: Denoiser, x, diffusion, noise_fn, callback=None, eta: float = 0.0, resample_steps: int = 1):
    """DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta = 1 has DDPM's posterior variance."""
    def step(out, i):
        abar, abar_prev = _abar(diffusion, i), _abar(diffusion, i - 1)
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        mean = out["pred_xstart"] * math.sqrt(abar_prev) + math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)) * out["eps"]
        return mean + sigma * noise_fn() if i > 0 and sigma > 0 else mean
    return _first_order(step, denoiser, x, diffusion, noise_fn, callback, resample_steps)


def _exponential_step(diffusion, i: int):
    """
    The data-prediction exponential integrator from step i to i - 1 (Lu et al. 2022):
    x_{i-1} = (sigma_{i-1} / sigma_i) x_i - alpha_{i-1} (e^{-h} - 1) D, with D a prediction of
    x_0 and h the step in log-SNR lambda = log(alpha / sigma).

    :return: (a function (x, D) -> x_{i-1}, h).
    """
    abar, abar_next = _abar(diffusion, i), _abar(diffusion, i - 1)
    sigma, alpha_n, sigma_n = math.sqrt(1 - abar), math.sqrt(abar_next), math.sqrt(1 - abar_next)
    h = math.log(alpha_n / sigma_n) - math.log(math.sqrt(abar) / sigma)
    ratio, weight = sigma_n / sigma, -alpha_n * math.expm1(-h)
    return (lambda x, d: ratio * x + weight * d), h


def sample_dpmpp_2m(denoiser: Denoiser, x, diffusion, noise_fn=None, callback=None):
    """
    DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep solver of the probability-flow
    ODE in log-SNR lambda = log(alpha / sigma), on the data prediction; it reuses the previous
    step's prediction, so each step costs one network evaluation. The first step is first
    order (it is DDIM), and the last lands on the prediction of x_0.
    """
    prev, h_prev = None, None
    for i in reversed(range(diffusion.num_timesteps)):
        out = denoiser(x, i)
        x0 = out["pred_xstart"]
        if i == 0:
            x = x0
        else:
            step, h = _exponential_step(diffusion, i)
            d = x0
            if prev is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev
            x = step(x, d)
            prev, h_prev = x0, h
        if callback is not None:
            callback({"x": x, "i": i, "pred_xstart": x0})
    return x


def sample_dpmpp_2s(denoiser: Denoiser, x, diffusion, noise_fn=None, callback=None):
    """
    DPM-Solver++(2S) with r = 1 (Lu et al. 2022): Heun's method in the exponential integrator.
    Each step from step i to i - 1 takes the DDIM (first-order) step, evaluates the network at
    its end, and repeats the step with the mean of the two predictions of x_0 (the trapezoid
    rule on the data prediction): second order, two evaluations per step. The last step, to
    step 0, lands on the prediction of x_0 (one evaluation), so S kept steps cost 2 S - 1.

    (Heun in EDM's variables, x / alpha against sigma, would multiply any disagreement of the
    two predictions by sigma_max / 2, some 5,000 for the cosine schedule; in the exponential
    integrator the weights stay below 1.)
    """
    for i in reversed(range(diffusion.num_timesteps)):
        out = denoiser(x, i)
        x0 = out["pred_xstart"]
        if i == 0:
            x = x0
        else:
            step, _ = _exponential_step(diffusion, i)
            x0_end = denoiser(step(x, x0), i - 1)["pred_xstart"]  # the first-order step's end
            x = step(x, (x0 + x0_end) / 2)
        if callback is not None:
            callback({"x": x, "i": i, "pred_xstart": x0})
    return x


@dataclass(frozen=True)
class SamplerSpec:
    fn: Callable
    help: str
    evaluations: Callable[[int], int]  # network evaluations of S kept steps (per window, no guidance)
    steps_for: Callable[[int], int]  # kept steps that spend a budget of E evaluations
    first_order: bool  # accepts --resample_steps > 1 (replacement with resampling)
    default_evaluations: int  # network evaluations when --steps is not given (0 = every diffusion step)
    default_grid: str  # the step grid when --grid is 'auto'


# Defaults measured on the small preset's checkpoint (README, "Samplers"): DPM-Solver++(2M) with
# 20 evaluations on the log-SNR grid matches DDIM with 100 within the seed-to-seed spread and lies
# closer to the converged sample. Each sampler's default grid is the one that measured best for
# it there: even in log-SNR (DPM-Solver's step variable) for 2M; uniform in t for 2S (on the
# log-SNR grid it came less close to the converged sample at 9 and 19 evaluations), and DDIM's
# and DDPM's own strides for those two.
DEFAULT_SAMPLER = "dpmpp_2m"
SAMPLERS: Dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(sample_ddpm, "ancestral (stochastic), the network's reverse-step Gaussian",
                        lambda s: s, lambda e: e, True, 0, "uniform"),
    "ddim": SamplerSpec(sample_ddim, "DDIM, deterministic with --eta 0", lambda s: s, lambda e: e, True, 50,
                        "uniform"),
    "dpmpp_2m": SamplerSpec(sample_dpmpp_2m, "DPM-Solver++(2M), second-order multistep, deterministic",
                            lambda s: s, lambda e: e, False, 20, "logsnr"),
    "dpmpp_2s": SamplerSpec(sample_dpmpp_2s, "DPM-Solver++(2S), r = 1 (Heun in the exponential integrator), "
                            "two evaluations per step, deterministic",
                            lambda s: 2 * s - 1, lambda e: max(1, (e + 1) // 2), False, 19, "uniform"),
}
GRIDS = ("uniform", "karras", "logsnr")


def sample(diffusion: GaussianDiffusion, model: Callable, shape, generators: Sequence[torch.Generator], *,
           obs_mask: Optional[torch.Tensor] = None, x_known: Optional[torch.Tensor] = None,
           sampler: str = "ddpm", eta: float = 0.0, conditioning: str = "mask", resample_steps: int = 1,
           guidance_scale: float = 1.0, clip_denoised: bool = True, model_kwargs=None,
           callback: Optional[Callable] = None, progress: bool = False, device=None) -> torch.Tensor:
    """
    Generate videos, holding the given frames fixed: ``sampler`` walks every step of
    ``diffusion`` (respace it to choose the grid and the number of steps).

    :param diffusion: the (possibly respaced) diffusion process.
    :param model: the network, called as model(x, t, obs_mask=..., **model_kwargs).
    :param shape: (N, C, T, H, W).
    :param generators: one torch.Generator per video (its own seed).
    :param obs_mask: [N, T], 1 = given frame; None = unconditional.
    :param x_known: [N, C, T, H, W] holding the given frames (other frames ignored).
    :param sampler: a key of ``SAMPLERS``.
    :param eta: DDIM noise scale (0 = deterministic).
    :param conditioning: "mask" or "replacement" (see the module docstring).
    :param resample_steps: R, repetitions of each step under replacement (1 = plain replacement).
    :param guidance_scale: w of the frame guidance (1 = none).
    :param callback: called after every step with dict(x, i, pred_xstart).
    :param progress: show a tqdm bar over the network evaluations.
    :return: [N, C, T, H, W] videos in [-1, 1]; given frames equal x_known exactly.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"--sampler must be one of {tuple(SAMPLERS)}, got {sampler!r}")
    spec = SAMPLERS[sampler]
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
    if resample_steps < 1:
        raise ValueError(f"--resample_steps must be >= 1, got {resample_steps}")
    if resample_steps > 1 and conditioning != "replacement":
        raise ValueError("--resample_steps > 1 applies to replacement conditioning only")
    if resample_steps > 1 and not spec.first_order:
        raise ValueError(f"--resample_steps > 1 re-noises after each step, which a multistep or two-evaluation "
                         f"solver cannot do: use --sampler ddpm or ddim (not {sampler})")
    if guidance_scale != 1.0 and conditioning != "mask":
        raise ValueError("--guidance_scale needs a model trained with the frame mask (conditioning 'mask')")
    if eta != 0.0 and sampler != "ddim":
        raise ValueError(f"--eta applies to --sampler ddim only (got --sampler {sampler})")
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

    denoiser = make_denoiser(diffusion, model, x_known, obs, conditioning=conditioning,
                             guidance_scale=guidance_scale, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                             noise_fn=noise_fn)
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=spec.evaluations(diffusion.num_timesteps) * resample_steps, desc="sampling", leave=False)
        inner = denoiser

        def denoiser(x, i):  # noqa: F811 - the same denoiser, counted
            bar.update(1)
            return inner(x, i)
    options = {"eta": eta} if sampler == "ddim" else {}
    if spec.first_order:
        options["resample_steps"] = resample_steps
    x = spec.fn(denoiser, noise_fn(), diffusion, noise_fn, callback, **options)
    if progress:
        bar.close()
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
