"""
Which videos each rank trains on at each step.

The training stream is the concatenation of per-epoch permutations of the dataset
(epoch e shuffled with a generator seeded by (seed, e)). Step s takes positions
[s*G, (s+1)*G) of the stream, G the global batch, and rank r takes its contiguous
slice of B = G / world_size. So the global batch at a step does not depend on the
number of ranks, and resuming at step s only needs s.
"""

from typing import Iterator, List, Tuple

import torch

from ..seeds import seed_of


class TrainBatchSampler(torch.utils.data.Sampler):
    """
    Infinite batch sampler yielding this rank's dataset indices for each step.

    :param num_items: dataset length.
    :param batch_size: videos per rank per step (B).
    :param rank: this rank.
    :param world_size: number of ranks.
    :param seed: shuffling seed.
    :param start_step: first step to yield (resume).
    """

    def __init__(self, num_items: int, batch_size: int, rank: int, world_size: int, seed: int, start_step: int = 0):
        if num_items < 1:
            raise ValueError("the training dataset is empty")
        self.num_items, self.batch_size = num_items, batch_size
        self.rank, self.world_size, self.seed, self.start_step = rank, world_size, seed, start_step
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(seed_of(self.seed, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.num_items, generator=g)
        return self._perm

    def indices_for_step(self, step: int) -> List[int]:
        return [index for index, _ in self.keys_for_step(step)]

    def keys_for_step(self, step: int) -> List[Tuple[int, int]]:
        """(dataset index, item seed) for this rank's videos at ``step``; the seed picks e.g. the window."""
        first = (step * self.world_size + self.rank) * self.batch_size
        out = []
        for pos in range(first, first + self.batch_size):
            epoch, offset = divmod(pos, self.num_items)
            out.append((int(self._permutation(epoch)[offset]), seed_of(self.seed, 0xDA7A, pos)))
        return out

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.keys_for_step(step)
            step += 1


def eval_shard(num_items: int, rank: int, world_size: int) -> List[int]:
    """This rank's evaluation items: every item exactly once over all ranks (strided, so ragged by at most 1)."""
    return list(range(rank, num_items, world_size))
