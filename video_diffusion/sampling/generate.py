"""
Generation: a batch of windows from noise (``sample``), videos longer than the window
rolled out window by window (``rollout``), and a plan's samples split across ranks
(``generate``) and gathered back in order (``gather_samples``).

Whole global batches go to ranks round-robin and every sample draws its noise from its own
seed, so a sample file is bit-identical on 1 rank or 8.
"""

import sys
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from .. import distributed
from ..data import eval_shard
from ..diffusion.gaussian_diffusion import GaussianDiffusion, frames_to_elements
from ..seeds import seed_of
from .denoiser import make_denoiser, randn_per_video
from .outputs import to_uint8
from .plan import SamplingPlan
from .samplers import SAMPLERS, Grid, check_sampler_options


def sample(diffusion: GaussianDiffusion, model: Callable, shape, generators: Sequence[torch.Generator], *,
           obs_mask: Optional[torch.Tensor] = None, x_known: Optional[torch.Tensor] = None,
           sampler: str, eta: float = 0.0, conditioning: str = "mask", resample_steps: int = 1,
           guidance_scale: float = 1.0, clip_denoised: bool = True, model_kwargs=None,
           callback: Optional[Callable] = None, progress: bool = False, device=None,
           self_condition: bool = False) -> torch.Tensor:
    """
    Sample one batch of windows, holding the given frames fixed: ``sampler`` walks every step
    of ``diffusion`` (a plan's process on its grid).

    :param diffusion: the (possibly respaced) diffusion process.
    :param model: the network, called as model(x, t, obs_mask=..., **model_kwargs).
    :param shape: (N, C, T, H, W).
    :param generators: one torch.Generator per video (its own seed).
    :param obs_mask: [N, T], 1 = given frame; None = unconditional.
    :param x_known: [N, C, T, H, W] holding the given frames (other frames ignored).
    :param sampler: a key of ``SAMPLERS`` (no default: a plan's, or the caller's own choice).
    :param eta: DDIM noise scale (0 = deterministic).
    :param conditioning: "mask" or "replacement" (see the module docstring).
    :param resample_steps: R, repetitions of each step under replacement (1 = plain replacement).
    :param guidance_scale: w of the frame guidance (1 = none).
    :param callback: called after every step with dict(x, i, pred_xstart).
    :param progress: show a tqdm bar over the network evaluations.
    :param self_condition: the network is self-conditioned (each call gets the last call's x_0).
    :return: [N, C, T, H, W] videos in [-1, 1]; given frames equal x_known exactly.
    """
    check_sampler_options(sampler, conditioning, resample_steps, guidance_scale, eta)
    spec = SAMPLERS[sampler]
    n = shape[0]
    if len(generators) != n:
        raise ValueError(f"need one generator per video: {n} videos, {len(generators)} generators")
    device = device or generators[0].device
    obs = torch.zeros(n, shape[2], device=device) if obs_mask is None else obs_mask.to(device).float()
    if obs.any() and x_known is None:
        raise ValueError("obs_mask marks given frames but x_known is None")
    x_known = torch.zeros(shape, device=device) if x_known is None else x_known.to(device).float()
    observed = frames_to_elements(obs).bool()

    def noise_fn():
        return randn_per_video(generators, shape[1:], device)

    denoiser = make_denoiser(diffusion, model, x_known, obs, conditioning=conditioning,
                             guidance_scale=guidance_scale, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                             noise_fn=noise_fn, self_condition=self_condition)
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=spec.evaluations(diffusion.num_timesteps) * resample_steps, desc="sampling", leave=False)
        inner = denoiser

        def denoiser(x, i):  # noqa: F811 - the same denoiser, counted
            bar.update(1)
            return inner(x, i)
    options = {"eta": eta} if sampler == "ddim" else {}
    if spec.first_order:
        options["resample_steps"] = resample_steps
    x = spec.fn(denoiser, noise_fn(), Grid.of(diffusion), noise_fn, callback, **options)
    if progress:
        bar.close()
    return torch.where(observed, x_known, x.clamp(-1, 1))


def rollout(sample_window: Callable, x_context: torch.Tensor, num_context: int, num_frames: int, seq_len: int,
            context_frames: int) -> torch.Tensor:
    """
    Generate ``num_frames`` frames window by window, each window conditioned on the last
    ``context_frames`` frames available (the given ones first, then generated ones).

    :param sample_window: fn(x_known [N, C, seq_len, H, W], obs_mask [N, seq_len], window index) -> window.
    :param x_context: [N, C, >= num_context, H, W] with the given frames first.
    :param num_context: number of given frames at the start (0 = start unconditionally).
    :param num_frames: L, total frames to return (given ones included).
    :param seq_len: the model's window.
    :param context_frames: c, frames each later window is conditioned on (1 <= c < seq_len).
    :return: [N, C, L, H, W].
    """
    if not 1 <= context_frames < seq_len:
        raise ValueError(f"--context_frames must be in [1, seq_len={seq_len}), got {context_frames}: "
                         "a window must hold its context and at least one new frame")
    if num_context > seq_len - 1:
        raise ValueError(f"{num_context} given frames do not leave room in a window of {seq_len}")
    n, c, _, h, w = x_context.shape
    video = x_context[:, :, :num_context]
    window_index = 0
    while video.shape[2] < num_frames:
        ctx = video[:, :, -context_frames:] if window_index else video
        k = ctx.shape[2]
        x_known = torch.zeros(n, c, seq_len, h, w, device=x_context.device, dtype=x_context.dtype)
        x_known[:, :, :k] = ctx
        obs = torch.zeros(n, seq_len, device=x_context.device)
        obs[:, :k] = 1
        window = sample_window(x_known, obs, window_index)
        video = torch.cat([video, window[:, :, k:]], dim=2)
        window_index += 1
    return video[:, :, :num_frames]


def sample_items(model, plan: SamplingPlan, items: Sequence[int], device, gt: Optional[torch.Tensor] = None,
                 labels: Optional[Sequence[int]] = None):
    """
    The samples of ``items`` (item = video * S + sample) as ``plan`` says, with the given frames
    and ground truth ``gt`` [n, C, L, H, W] of their test videos (None for generation).

    :param labels: class labels of the test videos (a class-conditional model); drawn from
        each video's seed when None.
    :return: (samples [n, C, L, H, W] in [-1, 1], the frame mask [n, L]).
    """
    n, per_video = len(items), plan.samples_per_video
    videos_of = [i // per_video for i in items]
    gens = [torch.Generator(device=device).manual_seed(plan.seed_for(i)) for i in items]
    model_kwargs = {}
    if plan.num_classes:  # labels of the test videos, or drawn from each video's seed
        model_kwargs["y"] = torch.tensor(labels if labels is not None else
                                         [seed_of(plan.seed, v, 0xC1A55) % plan.num_classes for v in videos_of],
                                         device=device)
    channels, size, _ = plan.frame_shape
    seq_len = plan.window
    mask = plan.mask(n, device)

    def window(x_known, obs_mask, _w=None):
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                            enabled=plan.precision == "bf16"):
            return sample(plan.diffusion, model, (n, channels, seq_len, size, size), gens, obs_mask=obs_mask,
                          x_known=x_known, sampler=plan.sampler, conditioning=plan.conditioning,
                          guidance_scale=plan.guidance_scale, model_kwargs=model_kwargs, device=device,
                          self_condition=plan.self_condition, **plan.sampler_options).float()

    # The network is convolutional in time, so a shorter clip is one window of num_frames;
    # a longer one is rolled out window by window.
    if plan.num_frames <= seq_len:
        return window(gt, mask), mask
    given = plan.num_cond_frames if plan.task == "prediction" else 0
    context = gt if gt is not None else torch.zeros(n, channels, 0, size, size, device=device)
    videos = rollout(window, context, given, plan.num_frames, seq_len, plan.context_frames)
    full_mask = torch.zeros(n, plan.num_frames, device=device)
    full_mask[:, :given] = 1
    return videos, full_mask


def generate(model, plan: SamplingPlan, ctx: distributed.DistContext, progress: bool = False) -> Dict:
    """
    This rank's share of the plan's samples: sample s of test video v is item v * S + s,
    drawn with the seed (plan.seed, v, s) and the given frames of test video v, so the result
    does not depend on the number of ranks.

    :return: dict of item -> (sample uint8 [T, H, W, C], gt uint8 or None, obs_mask [T]);
        items run over ``plan.num_items``.
    """
    items = plan.num_items
    # Whole global batches go to ranks round-robin: each video is computed beside the same
    # neighbours on any number of ranks, so the kernels, and the file, are bit-identical.
    all_batches = [list(range(s, min(s + plan.batch_size, items))) for s in range(0, items, plan.batch_size)]
    batches = [all_batches[b] for b in eval_shard(len(all_batches), ctx.rank, ctx.world_size)]
    out = {}
    if progress:
        from tqdm import tqdm
        # in a log file (no terminal) a line every 30 s, each with the time left
        batches = tqdm(batches, desc="sampling batches", mininterval=1 if sys.stderr.isatty() else 30)
    for idx in batches:
        test_items = [plan.data[i // plan.samples_per_video] for i in idx] if plan.data is not None else None
        gt = torch.stack([it["video"] for it in test_items]).to(ctx.device) if test_items else None
        labels = [it["y"] for it in test_items] if test_items and "y" in test_items[0] else None
        videos, full_mask = sample_items(model, plan, idx, ctx.device, gt, labels)
        samples_u8 = to_uint8(videos)
        gt_u8 = to_uint8(gt) if gt is not None else None
        for j, i in enumerate(idx):
            out[i] = (samples_u8[j], None if gt_u8 is None else gt_u8[j], full_mask[j].cpu().numpy().astype(np.uint8))
    return out


def gather_samples(ctx: distributed.DistContext, mine: Dict, num_items: int):
    """Every rank calls this; rank 0 gets (samples, gt or None, obs_mask) in item order, others None."""
    parts = distributed.all_gather_object(ctx, mine)
    if not ctx.is_main:
        return None
    merged = {}
    for p in parts:
        merged.update(p)
    distributed.check_covered([k for p in parts for k in p], num_items)
    order = range(num_items)
    samples = np.stack([merged[i][0] for i in order])
    gt = None if merged[0][1] is None else np.stack([merged[i][1] for i in order])
    masks = np.stack([merged[i][2] for i in order])
    return samples, gt, masks
