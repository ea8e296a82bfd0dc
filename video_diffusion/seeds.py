"""
Seeds derived from keys, so that every random draw belongs to one video (or step), not to
the order in which a process happens to make it: a result then does not depend on the
batch it shares, the number of ranks, or a resume.
"""

import numpy as np

# Offset of the held-out embedded videos' seeds from the training videos' (sampling,
# evaluation and previews all draw the same held-out videos).
HELD_OUT_SEED = 0x7E57


def seed_of(*keys: int) -> int:
    """A well-mixed 63-bit seed from a tuple of integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))
