"""
Training statistics: what one step measured, summed over ranks in a single all-reduce,
and the running sums of a log window.

A step's figures form one small vector (named slots, below) so that the ranks exchange
them, and the preemption vote, in one collective. Everything stays on the device; the
host reads it only at log intervals.
"""

from typing import Dict

import torch

# Slots of the per-step vector: loss sums, the loss per quarter of the timestep range, and
# the number of ranks that were asked to stop (a signal), which every rank then sees.
SLOTS = ("loss", "mse", "vb", "count", "q0", "q1", "q2", "q3", "n0", "n1", "n2", "n3", "stop")
_I = {name: i for i, name in enumerate(SLOTS)}


class StepStats:
    """The figures of one step on this rank (then of all ranks, after ``all_reduce``)."""

    def __init__(self, device):
        self.vector = torch.zeros(len(SLOTS), device=device)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.vector[_I[name]]

    @torch.no_grad()
    def add_losses(self, losses: Dict[str, torch.Tensor], t: torch.Tensor, num_timesteps: int) -> None:
        v = self.vector
        v[_I["loss"]] += losses["loss"].float().sum()
        v[_I["mse"]] += losses["mse"].float().sum()
        if "vb" in losses:
            v[_I["vb"]] += losses["vb"].float().sum()
        v[_I["count"]] += len(t)
        if t.ndim == 2:  # one level per frame: the video's quarter is that of its mean level
            t = t.float().mean(dim=1).long()
        quarter = (4 * t // num_timesteps).clamp(max=3)
        v[_I["q0"]:_I["q3"] + 1] += torch.zeros(4, device=t.device).index_add_(0, quarter, losses["loss"].float())
        v[_I["n0"]:_I["n3"] + 1] += torch.bincount(quarter, minlength=4).float()

    def vote_stop(self, requested: bool) -> None:
        self.vector[_I["stop"]] = float(requested)

    def finite(self) -> torch.Tensor:
        """True when every loss figure is finite (a 0-d bool tensor on the device)."""
        return torch.isfinite(self.vector[:_I["count"]]).all()


class WindowStats:
    """
    Sums over the steps of one log window, and the run of consecutive non-finite steps
    (kept on the device; ``read`` and ``streaks`` are the host syncs).
    """

    def __init__(self, device):
        self.device = device
        self.streak = torch.zeros((), dtype=torch.long, device=device)
        self.max_streak = torch.zeros((), dtype=torch.long, device=device)
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(SLOTS), device=self.device)
        self.grad_norm = torch.zeros((), device=self.device)
        self.skipped = torch.zeros((), dtype=torch.long, device=self.device)

    @torch.no_grad()
    def record(self, step: StepStats, grad_norm: torch.Tensor, applied: torch.Tensor) -> None:
        bad = (~applied).long()
        self.streak = (self.streak + 1) * bad
        self.max_streak = torch.maximum(self.max_streak, self.streak)
        self.skipped += bad
        self.sums += torch.where(applied, step.vector, torch.zeros_like(step.vector))
        self.grad_norm += torch.where(applied, grad_norm.detach().float(), torch.zeros_like(self.grad_norm))

    def streaks(self):
        """(current, longest) runs of non-finite steps."""
        return tuple(int(v) for v in torch.stack([self.streak, self.max_streak]).tolist())

    def read(self, steps: int, learn_sigma: bool) -> Dict[str, float]:
        """Means over the window's applied steps, as progress.csv fields."""
        values = torch.cat([self.sums, self.grad_norm[None], self.skipped[None].float()]).tolist()
        s = dict(zip(SLOTS, values))
        skipped = int(values[-1])
        count = max(s["count"], 1.0)
        row = {"loss": s["loss"] / count, "mse": s["mse"] / count, "vb": s["vb"] / count if learn_sigma else "",
               "grad_norm": values[-2] / max(steps - skipped, 1), "skipped_steps": skipped}
        for q in range(4):
            row[f"loss_q{q}"] = s[f"q{q}"] / s[f"n{q}"] if s[f"n{q}"] else ""
        return row
