"""
Seeds derived from keys, so that every random draw belongs to one video (or step), not to
the order in which a process happens to make it: a result then does not depend on the
batch it shares, the number of ranks, or a resume.
"""

import random
from typing import Dict

import numpy as np
import torch

# Offset of the held-out embedded videos' seeds from the training videos' (sampling,
# evaluation and previews all draw the same held-out videos).
HELD_OUT_SEED = 0x7E57


def seed_of(*keys: int) -> int:
    """A well-mixed 63-bit seed from a tuple of integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def rng_state(device: torch.device) -> Dict:
    """This process's RNG states (torch, numpy, python, and the device's), for a checkpoint."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_process_rng(seed: int, rank: int) -> None:
    """Process RNG (dropout): a different stream per rank, derived from the seed."""
    rank_seed = seed_of(seed, rank, 0x5EED)
    torch.manual_seed(rank_seed)
    np.random.seed(rank_seed % 2 ** 32)
    random.seed(rank_seed)
