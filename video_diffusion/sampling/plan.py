"""
The sampling plan: the command-line options resolved, once and in one place, into what a
sampling run does — the task's frame mask, how the given frames condition the model, the
explicit grid of timesteps and the process on it, how many videos and samples per video,
and each sample's seed. ``generate`` and every script, study and preview sample from a plan.
"""

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..build import create_diffusion
from ..config import Config
from ..flags import parse_int_list
from ..diffusion.gaussian_diffusion import GaussianDiffusion, get_named_beta_schedule
from ..diffusion.masks import frames_mask, prediction_mask, unconditional_mask
from ..diffusion.respace import karras_timesteps, logsnr_timesteps, section_timesteps, strided_timesteps
from ..data import create_dataset
from ..seeds import HELD_OUT_SEED, seed_of
from .options import TASKS, SampleOptions
from .samplers import SAMPLERS, Grid, check_sampler_options


@dataclass(frozen=True)
class SamplingPlan:
    """
    Everything a sampling run does. Sample s of video v (item v * S + s, S =
    ``samples_per_video``) draws its noise from ``seed_for(item)`` and its given frames from
    test video v, so a plan's samples do not depend on batching or on the number of ranks.
    """
    options: SampleOptions = field(repr=False)  # what was asked
    task: str
    num_cond_frames: int  # prediction: the first c frames are given
    cond_frames: Tuple[int, ...]  # infill: the given frames
    window: int  # frames the network sees at once
    num_frames: int  # frames per output video (> window: rolled out window by window)
    context_frames: int  # rollout: frames each later window is conditioned on
    sampler: str
    sampler_options: Dict  # eta for ddim, resample_steps for the first-order samplers
    conditioning: str  # "mask" or "replacement"
    guidance_scale: float
    precision: str
    diffusion: GaussianDiffusion = field(repr=False)  # the process on the grid (the denoiser's)
    grid: Grid = field(repr=False)  # the explicit timesteps and noise levels the sampler walks
    grid_name: str  # how the grid was chosen: uniform, karras or logsnr
    data: Optional[Dataset] = field(repr=False)  # the test videos (None for generation)
    skipped: Tuple[Tuple[str, str], ...]  # (path, reason) of test files left out by --skip_bad_videos
    num_videos: int  # test videos (or generated videos) V
    samples_per_video: int
    seed: int
    batch_size: int
    frame_shape: Tuple[int, int, int]  # C, H, W
    num_classes: int
    self_condition: bool = False  # the network takes its previous x_0 estimate (the denoiser passes it)

    @property
    def num_items(self) -> int:
        return self.num_videos * self.samples_per_video

    def mask(self, n: int, device=None) -> torch.Tensor:
        """The frame mask of ``n`` videos' first window, [n, window]."""
        return task_mask(self.task, n, self.window, self.num_cond_frames, ",".join(map(str, self.cond_frames))
                         ).to(device)

    def seed_for(self, item: int) -> int:
        return seed_of(self.seed, item // self.samples_per_video, item % self.samples_per_video)

    def describe(self) -> str:
        spec, steps = SAMPLERS[self.sampler], len(self.grid)
        text = f"{self.sampler}, {steps} steps ({spec.evaluations(steps)} network evaluations), {self.grid_name} grid"
        if self.sampler == "ddim":
            text += f", eta {self.sampler_options['eta']:g}"
        return text


def task_mask(task: str, batch: int, seq_len: int, num_cond_frames: int, cond_frames: str) -> torch.Tensor:
    """The frame mask [batch, seq_len] of a task: the first c frames, the listed frames, or none."""
    if task == "prediction":
        return prediction_mask(batch, seq_len, num_cond_frames)
    if task == "infill":
        frames = parse_int_list(cond_frames, "--cond_frames")
        if not frames:
            raise ValueError("--task infill needs --cond_frames, e.g. '0,5,10'")
        return frames_mask(batch, seq_len, frames)
    if task == "generation":
        return unconditional_mask(batch, seq_len)
    raise ValueError(f"--task must be one of {TASKS}, got {task!r}")


def grid_of(opts: SampleOptions) -> str:
    """The step grid ``opts`` samples on: --grid, or with 'auto' the sampler's own."""
    return SAMPLERS[opts.sampler].default_grid if opts.grid == "auto" else opts.grid


def kept_timesteps(opts: SampleOptions, cfg: Config) -> Optional[set]:
    """
    The base timesteps that ``opts.sampler`` with ``opts.steps`` network evaluations walks,
    or None for the model's own process (every step, or the respacing it was trained on
    when --steps is not given).
    """
    if opts.steps < -1:
        raise ValueError(f"--steps must be >= 1, or 0 (all steps) or -1 (the sampler's default), got {opts.steps}")
    if opts.sampler not in SAMPLERS:
        raise ValueError(f"--sampler must be one of {tuple(SAMPLERS)}, got {opts.sampler!r}")
    if cfg.diffusion.timestep_respacing and opts.steps == -1:
        return None
    num_timesteps = cfg.diffusion.diffusion_steps
    spec = SAMPLERS[opts.sampler]
    evaluations = opts.steps if opts.steps != -1 else spec.default_evaluations
    if evaluations > spec.evaluations(num_timesteps):
        raise ValueError(f"--steps {evaluations} exceeds the model's {num_timesteps} diffusion steps")
    steps = spec.steps_for(evaluations) if evaluations else num_timesteps
    grid = grid_of(opts)
    if grid != "uniform":
        abar = np.cumprod(1.0 - get_named_beta_schedule(cfg.diffusion.noise_schedule, num_timesteps,
                                                        cfg.diffusion.schedule_shift))
        return (karras_timesteps if grid == "karras" else logsnr_timesteps)(abar, min(steps, num_timesteps))
    if steps >= num_timesteps:
        return None
    return strided_timesteps(num_timesteps, steps) if opts.sampler == "ddim" else section_timesteps(num_timesteps,
                                                                                                    [steps])


def resolve_conditioning(cfg: Config, opts: SampleOptions) -> str:
    """'mask' for models trained with the frame mask, 'replacement' for unconditional ones, or as asked."""
    trained_with_mask = cfg.mask.max_num_mask_frames > 0 and cfg.mask.uncondition_rate < 1.0
    conditioning = opts.conditioning
    if conditioning == "auto":
        conditioning = "mask" if trained_with_mask else "replacement"
    if conditioning == "mask" and not trained_with_mask and opts.task != "generation":
        raise ValueError("--conditioning mask: this model was trained without given frames "
                         "(max_num_mask_frames 0 or uncondition_rate 1); use --conditioning replacement")
    if opts.guidance_scale != 1.0 and cfg.mask.uncondition_rate <= 0.0:
        raise ValueError(f"--guidance_scale {opts.guidance_scale}: this model was trained with uncondition_rate 0 "
                         "and has never seen the unconditional case that guidance needs")
    return conditioning


def _check_options(cfg: Config, opts: SampleOptions) -> None:
    seq_len = cfg.model.seq_len
    if opts.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {opts.batch_size}")
    if opts.num_samples < 0:
        raise ValueError(f"--num_samples must be >= 0 (0 = one per test video), got {opts.num_samples}")
    if opts.samples_per_video < 1:
        raise ValueError(f"--samples_per_video must be >= 1, got {opts.samples_per_video}")
    if opts.num_frames < 0:
        raise ValueError(f"--num_frames must be >= 0 (0 = the model's seq_len), got {opts.num_frames}")
    window = min(seq_len, opts.num_frames or seq_len)
    task_mask(opts.task, 1, window, opts.num_cond_frames, opts.cond_frames)  # raises on bad frames
    if opts.num_frames > seq_len:
        if opts.task == "infill":
            raise ValueError("--num_frames beyond seq_len works with --task prediction or generation")
        if not 1 <= (opts.context_frames or default_context_frames(cfg)) < seq_len:
            raise ValueError(f"--context_frames {opts.context_frames} must be in [1, {seq_len}): a window of "
                             f"{seq_len} frames must hold its context and at least one new frame")
    if opts.eta < 0:
        raise ValueError(f"--eta must be >= 0, got {opts.eta}")
    if opts.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {opts.seed}")


def default_context_frames(cfg: Config) -> int:
    """
    Frames each later window of a rollout is conditioned on, by default: half the window, but
    never more than the K frames training kept (--max_num_mask_frames), so that every window
    sees a mask of the kind it was trained on.
    """
    return max(1, min(cfg.model.seq_len // 2, cfg.mask.max_num_mask_frames))


def context_note(cfg: Config, plan: "SamplingPlan") -> Optional[str]:
    """A line to print when a rollout keeps more context frames than training ever kept; else None."""
    k = cfg.mask.max_num_mask_frames
    if plan.num_frames > plan.window and plan.context_frames > k:
        return (f"note: --context_frames {plan.context_frames} conditions each window on more frames than training "
                f"ever kept (K = --max_num_mask_frames {k}): those masks were never trained on")
    return None


def resolve_num_videos(opts: SampleOptions, num_test_videos: Optional[int]) -> int:
    """--num_samples 0 means one sample per test video; more samples than test videos is an error."""
    if opts.num_samples == 0:
        if num_test_videos is None:
            raise ValueError("--num_samples 0 (one per test video) needs a conditioning task")
        return num_test_videos
    if num_test_videos is not None and opts.num_samples > num_test_videos:
        raise ValueError(f"--num_samples {opts.num_samples} exceeds the {num_test_videos} test videos; each sample "
                         "takes its own video (use --num_samples 0 for one per video)")
    return opts.num_samples


def test_dataset(cfg: Config, num_frames: int, data_dir: str = "", windows: str = "first", skip_bad: bool = False):
    """
    Videos that provide the given frames and the ground truth: the folder ``data_dir``
    (``windows`` "first": the first window of each video; "all": every non-overlapping
    window), or held-out embedded videos for a model trained on embedded data.

    :param skip_bad: leave out unusable files (listed in ``.skipped``) instead of raising;
        the training configuration's --skip_bad_videos never applies here.
    """
    if not data_dir and cfg.train.data_dir:
        raise ValueError(f"this model was trained on --data_dir {cfg.train.data_dir!r}: give --data_dir with "
                         "the videos whose frames condition the samples (e.g. the test split)")
    if windows not in ("first", "all"):
        raise ValueError(f"--deterministic must be 'first' or 'all', got {windows!r}")
    return create_dataset(cfg, data_dir=data_dir, seq_len=num_frames, windows=windows, seed_offset=HELD_OUT_SEED,
                          skip_bad=skip_bad)


def resolve_plan(cfg: Config, opts: SampleOptions) -> SamplingPlan:
    """Check ``opts`` against the model's configuration and resolve them into a plan (the test videos included)."""
    _check_options(cfg, opts)
    conditioning = resolve_conditioning(cfg, opts)
    timesteps = kept_timesteps(opts, cfg)
    check_sampler_options(opts.sampler, conditioning, opts.resample_steps, opts.guidance_scale, opts.eta)
    diffusion = create_diffusion(cfg, timesteps=timesteps) if timesteps is not None else create_diffusion(cfg)
    num_frames = opts.num_frames or cfg.model.seq_len
    spec = SAMPLERS[opts.sampler]
    sampler_options = {"eta": opts.eta} if opts.sampler == "ddim" else {}
    if spec.first_order:
        sampler_options["resample_steps"] = opts.resample_steps
    data = (test_dataset(cfg, num_frames, opts.data_dir, opts.deterministic, opts.skip_bad_videos)
            if opts.task != "generation" else None)
    return SamplingPlan(
        options=opts, task=opts.task, num_cond_frames=opts.num_cond_frames,
        cond_frames=tuple(parse_int_list(opts.cond_frames, "--cond_frames")) if opts.task == "infill" else (),
        window=min(cfg.model.seq_len, num_frames), num_frames=num_frames,
        context_frames=opts.context_frames or default_context_frames(cfg), sampler=opts.sampler,
        sampler_options=sampler_options, conditioning=conditioning, guidance_scale=opts.guidance_scale,
        precision=opts.precision, diffusion=diffusion, grid=Grid.of(diffusion), grid_name=grid_of(opts), data=data,
        skipped=tuple((str(p), r) for p, r in getattr(data, "skipped", [])),
        num_videos=resolve_num_videos(opts, None if data is None else len(data)),
        samples_per_video=opts.samples_per_video, seed=opts.seed, batch_size=opts.batch_size,
        frame_shape=(3 if cfg.model.rgb else 1, cfg.model.image_size, cfg.model.image_size),
        num_classes=cfg.model.num_classes, self_condition=cfg.model.self_condition)
