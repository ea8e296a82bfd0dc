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


def karras_timesteps(alphas_cumprod: np.ndarray, count: int, rho: float = 7.0) -> Set[int]:
    """
    ``count`` timesteps whose sigmas sqrt((1 - abar) / abar) follow Karras et al. (2022, eq. 5)
    from the largest sigma to the smallest: each target sigma takes the nearest timestep not
    yet taken (the last and the first timestep always), so exactly ``count`` are kept.
    """
    n = len(alphas_cumprod)
    if not 1 <= count <= n:
        raise ValueError(f"a Karras grid of {count} steps: need 1 <= steps <= {n}")
    sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    if count == 1:
        return {n - 1}
    ramp = np.linspace(0, 1, count)
    lo, hi = sigmas[0] ** (1 / rho), sigmas[-1] ** (1 / rho)
    targets = (hi + ramp * (lo - hi)) ** rho
    kept: Set[int] = set()
    for k, target in enumerate(targets):
        order = np.argsort(np.abs(np.log(sigmas) - np.log(target)))
        # leave room: the remaining targets need distinct, smaller timesteps
        free = [int(t) for t in order if int(t) not in kept and int(t) >= count - 1 - k
                and (not kept or int(t) < min(kept))]
        kept.add(free[0])
    return kept


def space_timesteps(num_timesteps: int, section_counts: Union[str, Iterable[int]], alphas_cumprod=None) -> Set[int]:
    """
    Choose which base timesteps to keep.

    :param num_timesteps: steps of the base process.
    :param section_counts: "ddimN" for N evenly strided steps (as DDIM), "karrasN" for N
        steps spaced as Karras et al.'s sigmas (rho = 7: dense at low noise), or a comma list
        "a,b,c" (or a list of ints) splitting the process into equal sections that keep
        a, b, c evenly spaced steps each; a single number N keeps N evenly spaced steps.
    :param alphas_cumprod: the base process's alpha-bar (needed by "karrasN" only).
    :return: the set of kept base timesteps.
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("karras"):
            try:
                want = int(spec[len("karras"):])
            except ValueError:
                raise ValueError(f"--timestep_respacing {spec!r}: 'karrasN' needs a step count N") from None
            if alphas_cumprod is None:
                raise ValueError("a 'karrasN' grid needs the process's alphas_cumprod")
            return karras_timesteps(alphas_cumprod, want)
        if spec.startswith("ddim"):
            try:
                want = int(spec[len("ddim"):])
            except ValueError:
                raise ValueError(f"--timestep_respacing {spec!r}: 'ddimN' needs a step count N, e.g. ddim50") from None
            for stride in range(1, num_timesteps + 1):
                kept = set(range(0, num_timesteps, stride))
                if len(kept) == want:
                    return kept
            raise ValueError(f"--timestep_respacing {spec}: no integer stride gives {want} of {num_timesteps} steps")
        try:
            section_counts = [int(x) for x in spec.split(",")]
        except ValueError:
            raise ValueError(f"--timestep_respacing must be 'ddimN' or comma-separated step counts, got {spec!r}")
    counts: List[int] = list(section_counts)
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
