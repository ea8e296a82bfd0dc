"""
Samplers: small functions over a denoiser and an explicit grid of noise levels.

A sampler is ``fn(denoiser, x_T, grid, noise_fn, callback, **options) -> x_0``: ``denoiser(x, i)``
is the network's prediction at step i of ``grid`` (``denoiser.make_denoiser``), ``x_T`` the
starting noise, ``grid`` the steps' noise levels (a ``Grid``: no process, no string to parse),
``noise_fn()`` fresh noise for the stochastic ones, and ``callback`` is called after every
step with dict(x, i, pred_xstart). ``SAMPLERS`` lists them with their budgets and default
grids; every script takes its choices from that table.
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, Sequence

import numpy as np
import torch

from .denoiser import CONDITIONINGS, Denoiser


@dataclass(frozen=True)
class Grid:
    """
    The steps a sampler walks, step 0 the least noisy: step i shows the network base timestep
    ``timesteps[i]`` at alpha-bar ``alphas_cumprod[i]``; ``betas[i]`` = 1 - abar_i / abar_{i-1}
    (one step's re-noising, for resampling).
    """
    timesteps: Sequence[int]
    alphas_cumprod: np.ndarray
    betas: np.ndarray

    @classmethod
    def of(cls, diffusion) -> "Grid":
        """The grid of a (respaced) diffusion process: its kept timesteps and their noise levels."""
        return cls(tuple(getattr(diffusion, "timestep_map", range(diffusion.num_timesteps))),
                   diffusion.alphas_cumprod, diffusion.betas)

    def __len__(self) -> int:
        return len(self.alphas_cumprod)

    def abar(self, i: int) -> float:
        """alpha-bar of step i; 1 (no noise) below step 0."""
        return float(self.alphas_cumprod[i]) if i >= 0 else 1.0


# ---------------------------------------------------------------------- the samplers
def _first_order(step: Callable, denoiser: Denoiser, x, grid: Grid, noise_fn, callback, resample_steps: int = 1):
    """The loop of the one-evaluation-per-step samplers, with RePaint-style resampling (R > 1):
    after a step, x_{t-1} is noised back to level t and the step repeated."""
    for i in reversed(range(len(grid))):
        for r in range(resample_steps):
            out = denoiser(x, i)
            x_prev = step(out, i)
            if r < resample_steps - 1 and i > 0:
                beta = float(grid.betas[i])  # q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t)
                x = math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * noise_fn()
            else:
                x = x_prev
                break
        if callback is not None:
            callback({"x": x, "i": i, "pred_xstart": out["pred_xstart"]})
    return x


def sample_ddpm(denoiser: Denoiser, x, grid: Grid, noise_fn, callback=None, resample_steps: int = 1):
    """Ancestral sampling: x_{t-1} ~ p(x_{t-1} | x_t), the network's reverse-step Gaussian."""
    def step(out, i):
        return out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise_fn() if i > 0 else out["mean"]
    return _first_order(step, denoiser, x, grid, noise_fn, callback, resample_steps)


def sample_ddim(denoiser: Denoiser, x, grid: Grid, noise_fn, callback=None, eta: float = 0.0, resample_steps: int = 1):
    """DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta = 1 has DDPM's posterior variance."""
    def step(out, i):
        abar, abar_prev = grid.abar(i), grid.abar(i - 1)
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        mean = out["pred_xstart"] * math.sqrt(abar_prev) + math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)) * out["eps"]
        return mean + sigma * noise_fn() if i > 0 and sigma > 0 else mean
    return _first_order(step, denoiser, x, grid, noise_fn, callback, resample_steps)


def _exponential_step(grid: Grid, i: int):
    """
    The data-prediction exponential integrator from step i to i - 1 (Lu et al. 2022):
    x_{i-1} = (sigma_{i-1} / sigma_i) x_i - alpha_{i-1} (e^{-h} - 1) D, with D a prediction of
    x_0 and h the step in log-SNR lambda = log(alpha / sigma).

    :return: (a function (x, D) -> x_{i-1}, h).
    """
    abar, abar_next = grid.abar(i), grid.abar(i - 1)
    sigma, alpha_n, sigma_n = math.sqrt(1 - abar), math.sqrt(abar_next), math.sqrt(1 - abar_next)
    h = math.log(alpha_n / sigma_n) - math.log(math.sqrt(abar) / sigma)
    ratio, weight = sigma_n / sigma, -alpha_n * math.expm1(-h)
    return (lambda x, d: ratio * x + weight * d), h


def _exponential_solver(update: Callable, denoiser: Denoiser, x, grid: Grid, callback=None):
    """The loop of the exponential-integrator solvers: at step i the network's x_0, then
    ``update(x, x0, i)`` takes x to step i - 1; the last step lands on the prediction of x_0."""
    for i in reversed(range(len(grid))):
        x0 = denoiser(x, i)["pred_xstart"]
        x = x0 if i == 0 else update(x, x0, i)
        if callback is not None:
            callback({"x": x, "i": i, "pred_xstart": x0})
    return x


def sample_dpmpp_2m(denoiser: Denoiser, x, grid: Grid, noise_fn=None, callback=None):
    """
    DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep solver of the probability-flow
    ODE in log-SNR lambda = log(alpha / sigma), on the data prediction; it reuses the previous
    step's prediction, so each step costs one network evaluation. The first step is first
    order (it is DDIM), and the last lands on the prediction of x_0.
    """
    previous = {}  # the last step's prediction and log-SNR step

    def update(x, x0, i):
        step, h = _exponential_step(grid, i)
        d = x0
        if previous:
            r = previous["h"] / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous["x0"]
        previous.update(x0=x0, h=h)
        return step(x, d)

    return _exponential_solver(update, denoiser, x, grid, callback)


def sample_dpmpp_2s(denoiser: Denoiser, x, grid: Grid, noise_fn=None, callback=None):
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
    def update(x, x0, i):
        step, _ = _exponential_step(grid, i)
        x0_end = denoiser(step(x, x0), i - 1)["pred_xstart"]  # the first-order step's end
        return step(x, (x0 + x0_end) / 2)

    return _exponential_solver(update, denoiser, x, grid, callback)


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


def check_sampler_options(sampler: str, conditioning: str, resample_steps: int, guidance_scale: float,
                          eta: float) -> None:
    """The sampler options that do not go together, each named."""
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
