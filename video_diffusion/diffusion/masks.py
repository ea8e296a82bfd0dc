"""
Frame masks. ``obs_mask`` is [N, T] (or [T] for one video), 1 = observed: the frame is
given clean and not generated; 0 = to generate. All zeros is unconditional generation.

Training draws, per video, k ~ U{1..K} distinct frames to keep (from ``mask_range``),
or, with probability ``uncondition_rate``, none. That one random mask is what lets a
single model predict, infill and generate.
"""

from typing import Optional, Sequence, Tuple

import torch

from ..seeds import seed_of


def parse_mask_range(spec: Optional[str], seq_len: int) -> Tuple[int, int]:
    """
    Parse ``--mask_range a,b``: frames a..b-1 may be kept (Python slice convention).

    :param spec: "a,b", or None / "" for all frames.
    :param seq_len: number of frames per training video.
    :return: (a, b) with 0 <= a < b <= seq_len.
    """
    if not spec:
        return 0, seq_len
    try:
        a, b = (int(x) for x in spec.split(","))
    except ValueError:
        raise ValueError(f"--mask_range must be 'a,b' (frames a..b-1 may be kept), got {spec!r}")
    if not 0 <= a < b <= seq_len:
        raise ValueError(f"--mask_range {spec}: need 0 <= a < b <= --seq_len ({seq_len})")
    return a, b


def check_mask_config(seq_len: int, max_num_mask_frames: int, mask_range: Tuple[int, int],
                      uncondition_rate: float) -> None:
    """Raise a ValueError naming the flag when the training mask cannot be drawn."""
    a, b = mask_range
    if max_num_mask_frames < 0:
        raise ValueError(f"--max_num_mask_frames must be >= 0, got {max_num_mask_frames}")
    if max_num_mask_frames >= seq_len:
        raise ValueError(f"--max_num_mask_frames {max_num_mask_frames} must be < --seq_len {seq_len}: "
                         "at least one frame per video must be left to generate")
    if max_num_mask_frames > b - a:
        raise ValueError(f"--max_num_mask_frames {max_num_mask_frames} exceeds the {b - a} frames "
                         f"that --mask_range {a},{b} allows to keep")
    if not 0.0 <= uncondition_rate <= 1.0:
        raise ValueError(f"--uncondition_rate must lie in [0, 1], got {uncondition_rate}")
    if max_num_mask_frames == 0 and uncondition_rate < 1.0:
        raise ValueError("--max_num_mask_frames 0 keeps no frame: set --uncondition_rate 1 for an "
                         "unconditional model")


def sample_train_mask(seq_len: int, max_num_mask_frames: int, uncondition_rate: float,
                      mask_range: Tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """
    Draw one video's training mask.

    :param seq_len: frames in the video.
    :param max_num_mask_frames: K; k is uniform in 1..K.
    :param uncondition_rate: probability p of keeping no frame.
    :param mask_range: (a, b): only frames a..b-1 may be kept.
    :param generator: CPU generator owning this video's randomness.
    :return: [T] float mask, 1 on kept frames.
    """
    mask = torch.zeros(seq_len)
    uncond = torch.rand((), generator=generator).item() < uncondition_rate
    if uncond or max_num_mask_frames == 0:
        return mask
    a, b = mask_range
    k = int(torch.randint(1, max_num_mask_frames + 1, (), generator=generator))
    kept = a + torch.randperm(b - a, generator=generator)[:k]
    mask[kept] = 1.0
    return mask


def prediction_mask(batch_size: int, seq_len: int, num_cond_frames: int) -> torch.Tensor:
    """The first ``num_cond_frames`` frames observed (video prediction)."""
    if not 0 <= num_cond_frames < seq_len:
        raise ValueError(f"--num_cond_frames must be in [0, {seq_len}), got {num_cond_frames}")
    mask = torch.zeros(batch_size, seq_len)
    mask[:, :num_cond_frames] = 1.0
    return mask


def frames_mask(batch_size: int, seq_len: int, frames: Sequence[int]) -> torch.Tensor:
    """The given frame indices observed (infilling / interpolation)."""
    frames = list(frames)
    bad = [f for f in frames if not 0 <= f < seq_len]
    if bad:
        raise ValueError(f"--cond_frames {bad} out of range: the model has seq_len {seq_len}")
    if len(set(frames)) >= seq_len:
        raise ValueError(f"--cond_frames observes all {seq_len} frames: nothing left to generate")
    mask = torch.zeros(batch_size, seq_len)
    mask[:, frames] = 1.0
    return mask


def unconditional_mask(batch_size: int, seq_len: int) -> torch.Tensor:
    """No frame observed (unconditional generation)."""
    return torch.zeros(batch_size, seq_len)


def training_randomness(seed: int, step: int, first_index: int, video_shape: Sequence[int], seq_len: int,
                        max_num_mask_frames: int, uncondition_rate: float, mask_range: Tuple[int, int],
                        schedule_sampler, device, independent_noise_rate: float = 0.0,
                        self_condition_rate: float = 0.0):
    """
    The random choices of a training step for videos ``first_index, first_index + 1, ...`` of
    the global batch: each video's mask, timestep (with its importance weight) and noise come
    from a generator seeded by (seed, step, global index) only. So a step trains the same way
    on any number of ranks, and a resumed run repeats an uninterrupted one exactly.

    :param video_shape: [n, C, T, H, W] of this rank's videos.
    :param schedule_sampler: the timestep sampler (its ``sample`` takes one generator per video).
    :param independent_noise_rate: with this probability a video's frames each draw their own
        level, uniform over the sampler's ``num_timesteps`` (Diffusion Forcing, Chen et al. 2024); the
        others keep the video's one level on every frame. Above 0, t is [n, T]. The per-frame
        draws come after all of today's, so a rate of 0 leaves every other draw as it was.
    :param self_condition_rate: with this probability a video is trained on the network's own
        first estimate of x_0 (self-conditioning); drawn after all the others, likewise.
    :return: (masks [n, T], t [n] or [n, T], weights [n], noise [n, C, T, H, W], self_cond [n]
        bool or None when the rate is 0), on ``device``.
    """
    n = video_shape[0]
    seeds = [seed_of(seed, step, first_index + j) for j in range(n)]
    cpu_gens = [torch.Generator().manual_seed(s) for s in seeds]
    masks = torch.stack([sample_train_mask(seq_len, max_num_mask_frames, uncondition_rate, mask_range, g)
                         for g in cpu_gens]).to(device)
    t, weights = schedule_sampler.sample(cpu_gens, device)
    if independent_noise_rate > 0:
        rows = []
        for g, level in zip(cpu_gens, t.tolist()):
            independent = torch.rand((), generator=g).item() < independent_noise_rate
            levels = torch.randint(0, schedule_sampler.num_timesteps, (seq_len,), generator=g)
            rows.append(levels if independent else torch.full((seq_len,), level, dtype=torch.long))
        t = torch.stack(rows).to(device)
    self_cond = None
    if self_condition_rate > 0:
        self_cond = torch.tensor([torch.rand((), generator=g).item() < self_condition_rate for g in cpu_gens],
                                 device=device)
    dev_gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    noise = torch.stack([torch.randn(tuple(video_shape[1:]), generator=g, device=device) for g in dev_gens])
    return masks, t, weights, noise, self_cond
