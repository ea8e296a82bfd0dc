"""
Respacing: a diffusion process that keeps a subset of the base process's timesteps.

Keeping timesteps S = {s_0 < s_1 < ...} of a process with cumulative alphas abar gives a
new process whose step i has abar'_i = abar_{s_i}, i.e. beta'_i = 1 - abar_{s_i} / abar_{s_{i-1}}.
The network was trained on the base timesteps, so it is always shown s_i, never i.
"""

from typing import Iterable, List, Set, Union

import numpy as np
import torch

from .gaussian_diffusion import GaussianDiffusion


def _nearest_timesteps(log_sigmas: np.ndarray, targets: np.ndarray) -> Set[int]:
    """
    One timestep per target log-sigma (targets from the largest down): each takes the nearest
    timestep not yet taken, leaving room below for the targets still to come, so exactly
    ``len(targets)`` distinct timesteps are kept.
    """
    count = len(targets)
    kept: Set[int] = set()
    for k, target in enumerate(targets):
        order = np.argsort(np.abs(log_sigmas - target))
        free = [int(t) for t in order if int(t) not in kept and int(t) >= count - 1 - k
                and (not kept or int(t) < min(kept))]
        kept.add(free[0])
    return kept


def _log_sigmas(alphas_cumprod: np.ndarray, count: int, name: str) -> np.ndarray:
    if not 1 <= count <= len(alphas_cumprod):
        raise ValueError(f"a {name} grid of {count} steps: need 1 <= steps <= {len(alphas_cumprod)}")
    return 0.5 * np.log((1 - alphas_cumprod) / alphas_cumprod)


def karras_timesteps(alphas_cumprod: np.ndarray, count: int, rho: float = 7.0) -> Set[int]:
    """
    ``count`` timesteps whose sigmas sqrt((1 - abar) / abar) follow Karras et al. (2022, eq. 5)
    from the largest sigma to the smallest (the last and the first timestep always kept).
    """
    log_sigmas = _log_sigmas(alphas_cumprod, count, "Karras")
    if count == 1:
        return {len(alphas_cumprod) - 1}
    hi, lo = np.exp(log_sigmas[-1] / rho), np.exp(log_sigmas[0] / rho)
    return _nearest_timesteps(log_sigmas, np.log((hi + np.linspace(0, 1, count) * (lo - hi)) ** rho))


def logsnr_timesteps(alphas_cumprod: np.ndarray, count: int) -> Set[int]:
    """
    ``count`` timesteps evenly spaced in log-SNR (lambda = -log sigma), the variable in which
    DPM-Solver's step size h and its error are measured, from the least noisy step up to
    lambda = -lambda_0 (the noise-side mirror of the least noisy step); the first step is always
    the last timestep, where sampling starts from pure noise.

    Why the cap: the cosine schedule clips its last beta to 0.999, which sends lambda at the
    last timestep to about -9.9 while every step before it lies above -6.5; a grid evenly
    spaced down to -9.9 spends a quarter of its steps on what is still pure noise.
    """
    log_sigmas = _log_sigmas(alphas_cumprod, count, "log-SNR")
    if count == 1:
        return {len(alphas_cumprod) - 1}
    top = min(log_sigmas[-1], -log_sigmas[0])
    targets = np.linspace(top, log_sigmas[0], count)
    targets[0] = log_sigmas[-1]  # start from the pure-noise end of the process
    return _nearest_timesteps(log_sigmas, targets)


def space_timesteps(num_timesteps: int, section_counts: Union[str, Iterable[int]], alphas_cumprod=None) -> Set[int]:
    """
    Choose which base timesteps to keep.

    :param num_timesteps: steps of the base process.
    :param section_counts: "ddimN" for N evenly strided steps (as DDIM), "karrasN" for N
        steps spaced as Karras et al.'s sigmas (rho = 7: dense at low noise), "logsnrN" for N
        steps evenly spaced in log-SNR (``logsnr_timesteps``), or a comma list
        "a,b,c" (or a list of ints) splitting the process into equal sections that keep
        a, b, c evenly spaced steps each; a single number N keeps N evenly spaced steps.
    :param alphas_cumprod: the base process's alpha-bar (needed by "karrasN" and "logsnrN").
    :return: the set of kept base timesteps.
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        for prefix, make in (("karras", karras_timesteps), ("logsnr", logsnr_timesteps)):
            if spec.startswith(prefix):
                try:
                    want = int(spec[len(prefix):])
                except ValueError:
                    raise ValueError(f"--timestep_respacing {spec!r}: '{prefix}N' needs a step count N") from None
                if alphas_cumprod is None:
                    raise ValueError(f"a '{prefix}N' grid needs the process's alphas_cumprod")
                return make(alphas_cumprod, want)
        if spec.startswith("ddim"):
            try:
                want = int(spec[len("ddim"):])
            except ValueError:
                raise ValueError(f"--timestep_respacing {spec!r}: 'ddimN' needs a step count N, e.g. ddim50") from None
            try:
                return strided_timesteps(num_timesteps, want)
            except ValueError as e:
                raise ValueError(f"--timestep_respacing {spec}: {e}") from None
        try:
            section_counts = [int(x) for x in spec.split(",")]
        except ValueError:
            raise ValueError(f"--timestep_respacing must be 'ddimN' or comma-separated step counts, got {spec!r}")
    return section_timesteps(num_timesteps, list(section_counts))


def strided_timesteps(num_timesteps: int, count: int) -> Set[int]:
    """``count`` timesteps 0, s, 2s, ... at the integer stride s that gives exactly that many (DDIM's)."""
    for stride in range(1, num_timesteps + 1):
        kept = set(range(0, num_timesteps, stride))
        if len(kept) == count:
            return kept
    raise ValueError(f"no integer stride gives {count} of {num_timesteps} steps")


def section_timesteps(num_timesteps: int, counts: List[int]) -> Set[int]:
    """
    Split the process into ``len(counts)`` equal sections and keep counts[k] evenly spaced
    timesteps of section k (first and last included); one count N keeps N evenly spaced steps.
    """
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, set()
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"--timestep_respacing: cannot keep {count} steps of a section of {size}")
        # evenly spaced positions over [0, size - 1], first and last included
        positions = np.round(np.linspace(0, size - 1, count)).astype(int) if count > 1 else np.array([0])
        kept.update(start + int(p) for p in positions)
        start += size
    return kept


class SpacedDiffusion(GaussianDiffusion):
    """
    A GaussianDiffusion on a subset of the base process's timesteps.

    :param use_timesteps: the base timesteps to keep.
    :param base_kwargs: the base process's constructor arguments (betas, types).
    """

    def __init__(self, use_timesteps: Iterable[int], **base_kwargs):
        base = GaussianDiffusion(**base_kwargs)
        self.timestep_map = sorted(set(use_timesteps))
        if not self.timestep_map or self.timestep_map[-1] >= base.num_timesteps or self.timestep_map[0] < 0:
            raise ValueError(f"kept timesteps must lie in [0, {base.num_timesteps})")
        abar = base.alphas_cumprod[self.timestep_map]
        betas = 1.0 - abar / np.append(1.0, abar[:-1])
        super().__init__(**{**base_kwargs, "betas": betas})
        self.base_num_timesteps = base.num_timesteps

    def model_timesteps(self, t):
        key = ("timestep_map", t.device)
        if key not in self._device_cache:
            self._device_cache[key] = torch.as_tensor(self.timestep_map, dtype=torch.long, device=t.device)
        return self._device_cache[key][t]
