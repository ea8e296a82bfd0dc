"""
Exponential moving averages of a network's weights, at one or more decay rates.

The averages are what sampling uses. They live on the training device and are updated
in place after every optimizer step; a skipped (non-finite) step leaves them as they are.

Each rate is warmed up: at training step n (counted from 0, skipped steps included, so a resumed
run continues exactly) the decay is min(rate, (1 + n) / (10 + n)), so
the average spans about the last n / 9 steps until it reaches the rate's own horizon. Without
it a short run's average still holds a share rate^n of the initial weights (0.99^250 = 8% after
the tiny preset's 250 steps), and the zero-initialised output layer's share pulls every
predicted pixel towards mid-grey: the tiny preset's black background came out about 6 grey
levels bright, which alone took its SSIM below a black frame's (docs/research_log.md).
"""

from typing import Dict, Iterable, List

import torch


class EMA:
    """
    :param model: the network whose trainable parameters are averaged.
    :param rates: decay rates, e.g. (0.999, 0.9999).
    """

    def __init__(self, model: torch.nn.Module, rates: Iterable[float]):
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.rates = list(rates)
        self.shadow: Dict[float, List[torch.Tensor]] = {r: [p.detach().clone() for p in self.params]
                                                        for r in self.rates}

    @torch.no_grad()
    def update(self, applied: torch.Tensor, step: int) -> None:
        """Move every average towards the current weights; ``applied`` (a 0-d bool tensor) False = no change.
        It stays on the device, so a skipped step costs no host sync. ``step``: the training step
        that was just taken (0 for the first), which sets the warm-up."""
        warmup = (1.0 + step) / (10.0 + step)
        for rate, shadow in self.shadow.items():
            torch._foreach_lerp_(shadow, self.params, applied.float() * (1.0 - min(rate, warmup)))

    def weights(self, rate: float, device="cpu") -> Dict[str, torch.Tensor]:
        """A full state dict of the network (buffers included) with the averaged weights of ``rate``."""
        sd = {k: v.detach().to(device) for k, v in self.model.state_dict().items()}
        sd.update({n: p.detach().to(device) for n, p in zip(self.names, self.shadow[rate])})
        return sd

    def state_dict(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """{str(rate): full network state dict}: each entry loads into a fresh network for sampling."""
        return {str(rate): self.weights(rate) for rate in self.rates}

    def load_state_dict(self, state: Dict[str, Dict[str, torch.Tensor]]) -> List[float]:
        """
        Restore the averages of the rates stored in ``state``.

        :return: the rates of this run that the checkpoint lacks (they restart from the current weights).
        """
        new = []
        for rate in self.rates:
            if str(rate) in state:
                sd = state[str(rate)]
                self.shadow[rate] = [sd[n].to(p.device).clone() for n, p in zip(self.names, self.params)]
            else:
                self.shadow[rate] = [p.detach().clone() for p in self.params]
                new.append(rate)
        return new
