"""
Timestep samplers for training. Each returns timesteps and importance weights such that
the weighted loss is an unbiased estimate of the uniformly-weighted loss.

Randomness comes from explicit generators (one per video), so the timesteps of video i
at step s depend on (seed, s, i) only, never on how many ranks share the batch.
"""

from typing import Sequence

import numpy as np
import torch

SAMPLERS = ("uniform", "loss-second-moment")


class UniformSampler:
    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def weights(self) -> np.ndarray:
        return np.ones(self.num_timesteps)

    def sample(self, generators: Sequence[torch.Generator], device):
        """
        :param generators: one CPU generator per video.
        :return: (t [N] int64, weights [N] float32) on ``device``.
        """
        w = torch.as_tensor(self.weights(), dtype=torch.float64)
        p = w / w.sum()
        t = torch.stack([torch.multinomial(p, 1, generator=g)[0] for g in generators])
        weights = 1.0 / (len(p) * p[t])
        return t.to(device), weights.float().to(device)

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the global batch's per-video losses (only the importance sampler uses them)."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class LossSecondMomentResampler(UniformSampler):
    """
    Importance sampling of timesteps by sqrt(E[loss^2]) per timestep (improved-diffusion),
    with a fraction ``uniform_prob`` kept uniform; uniform until every timestep has
    ``history`` losses recorded.

    ``update`` must see the *global* batch (every rank's losses, in global order) so that
    all ranks keep identical histories; the training loop gathers them.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        self.history = history
        self.uniform_prob = uniform_prob
        self.loss_history = np.zeros((num_timesteps, history), dtype=np.float64)
        self.loss_counts = np.zeros(num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history).all())

    def weights(self) -> np.ndarray:
        if not self.warmed_up():
            return np.ones(self.num_timesteps)
        w = np.sqrt(np.mean(self.loss_history ** 2, axis=-1))
        w /= w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / len(w)

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        for t, loss in zip(timesteps.tolist(), losses.tolist()):
            if self.loss_counts[t] == self.history:
                self.loss_history[t, :-1] = self.loss_history[t, 1:]
                self.loss_history[t, -1] = loss
            else:
                self.loss_history[t, self.loss_counts[t]] = loss
                self.loss_counts[t] += 1

    def state_dict(self):
        return {"loss_history": self.loss_history.copy(), "loss_counts": self.loss_counts.copy()}

    def load_state_dict(self, state):
        self.loss_history = np.array(state["loss_history"], dtype=np.float64)
        self.loss_counts = np.array(state["loss_counts"], dtype=np.int64)


def create_timestep_sampler(name: str, num_timesteps: int) -> UniformSampler:
    if name == "uniform":
        return UniformSampler(num_timesteps)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(num_timesteps)
    raise ValueError(f"--schedule_sampler must be one of {SAMPLERS}, got {name!r}")
