"""
Sampling from a checkpoint: rebuild the model from its stored configuration, build the
task's frame mask, split the videos across ranks and write the sample file.

Video i (global index) takes its noise from a generator seeded by (seed, i) and its
given frames from test video i, so the sample file is the same on 1 rank or 8.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from . import dist_util
from .build import create_diffusion, create_model
from .atomic import write_json, write_npz
from .checkpoint import load_checkpoint
from .config import Config, apply_overrides, parse_int_list, str2bool, validate
from .data import create_dataset, eval_shard, seed_of
from .masking import frames_mask, prediction_mask, unconditional_mask
from .nn import to_channels_last
from .sampling import CONDITIONINGS, DEFAULT_SAMPLER, GRIDS, SAMPLERS, rollout, sample
from .visualize import save_gif, strip

TASKS = ("prediction", "infill", "generation")


def _opt(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class SampleOptions:
    """What to sample and how. Declared once: the scripts' flags are generated from it."""
    task: str = _opt("prediction", "what the given frames are", choices=TASKS)
    num_cond_frames: int = _opt(1, "prediction: the first c frames are given")
    cond_frames: str = _opt("", "infill: the given frame indices, e.g. '0,7'")
    num_samples: int = _opt(8, "test videos to sample (generation: videos); 0 = one per test video, every "
                               "video exactly once across ranks")
    samples_per_video: int = _opt(1, "samples drawn for each test video (best-of-k figures need k > 1)")
    batch_size: int = _opt(8, "videos per forward pass per rank")
    seed: int = _opt(0, "sample s of video v draws its noise from the seed (seed, v, s)")
    sampler: str = _opt(DEFAULT_SAMPLER, "; ".join(f"'{k}': {v.help}" for k, v in SAMPLERS.items()),
                        choices=tuple(SAMPLERS))
    steps: int = _opt(-1, "network evaluations per window: -1 = the sampler's default ("
                          + ", ".join(f"{k}: {v.default_evaluations or 'all diffusion steps'}" for k, v in SAMPLERS.items())
                          + "), 0 = all diffusion steps")
    grid: str = _opt("auto", "where the steps lie: 'uniform' in t (DDIM's strides for ddim), 'karras' "
                             "(Karras et al.'s sigma spacing, dense at low noise), 'logsnr' (even in log-SNR, "
                             "DPM-Solver's step variable) or 'auto', the sampler's own ("
                             + ", ".join(f"{k}: {v.default_grid}" for k, v in SAMPLERS.items()) + ")",
                     choices=("auto",) + GRIDS)
    eta: float = _opt(0.0, "DDIM noise scale (0 = deterministic)")
    precision: str = _opt("fp32", "'fp32', or 'bf16' autocast of the network (GPU: about twice as fast)",
                          choices=("fp32", "bf16"))
    conditioning: str = _opt("auto", "how given frames condition: 'mask' (trained with the frame mask), "
                                     "'replacement' (RaMViD's baseline for unconditional models); 'auto' picks "
                                     "from the training configuration", choices=("auto",) + CONDITIONINGS)
    resample_steps: int = _opt(1, "replacement: repeat each step R times with re-noising (1 = plain replacement)")
    guidance_scale: float = _opt(1.0, "frame guidance w: uncond + w (cond - uncond); 1 = none")
    num_frames: int = _opt(0, "frames per video L; beyond the model's window the video is rolled out window "
                              "by window (0 = the window)")
    context_frames: int = _opt(0, "rollout: frames each new window is conditioned on (0 = half the window)")
    data_dir: str = _opt("", "videos giving the given frames and ground truth (default: held-out embedded videos)")
    deterministic: str = _opt("first", "test windows from --data_dir: the first of each video, or every "
                                       "non-overlapping one", choices=("first", "all"))
    skip_bad_videos: bool = _opt(False, "leave out unusable test videos (each named, and counted in the output) "
                                        "instead of stopping; never taken from the training configuration")


def add_sample_flags(parser, exclude: Sequence[str] = (), **defaults) -> None:
    """
    One flag per SampleOptions field (``exclude`` leaves some out, ``defaults`` changes
    the default shown and used, e.g. for a protocol script).
    """
    group = parser.add_argument_group("sampling")
    for f in dataclasses.fields(SampleOptions):
        if f.name in exclude:
            continue
        default = defaults.get(f.name, f.default)
        kw = dict(default=default, type=type(f.default), help=f"{f.metadata['help']} (default: {default!r})")
        if isinstance(f.default, bool):
            kw.update(type=str2bool, nargs="?", const=True)
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        group.add_argument(f"--{f.name}", **kw)


def add_checkpoint_flags(parser, out_dir: str) -> None:
    """The flags every script that samples from a checkpoint shares: which weights, and where runs go."""
    from .config import str2bool

    parser.add_argument("--model_path", required=True, help="checkpoint written by video_train.py")
    parser.add_argument("--out_dir", default=out_dir,
                        help=f"parent folder; each run writes into a new <out_dir>/<NNN>_<task>/ (default: {out_dir})")
    parser.add_argument("--use_ema", type=str2bool, nargs="?", const=True, default=None,
                        help="use the EMA weights (default: yes when the checkpoint has them)")
    parser.add_argument("--ema_rate", default=None, help="which stored EMA rate (default: the largest)")


def sample_options_from(args, **fixed) -> SampleOptions:
    """SampleOptions from parsed flags; ``fixed`` sets fields that a script does not expose."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SampleOptions) if hasattr(args, f.name)}
    return SampleOptions(**{**values, **fixed})


def sampling_respacing(opts: SampleOptions, num_timesteps: int) -> str:
    """The timestep respacing (the step grid) that spends ``opts.steps`` network evaluations with ``opts.sampler``."""
    if opts.steps < -1:
        raise ValueError(f"--steps must be >= 1, or 0 (all steps) or -1 (the sampler's default), got {opts.steps}")
    if opts.sampler not in SAMPLERS:
        raise ValueError(f"--sampler must be one of {tuple(SAMPLERS)}, got {opts.sampler!r}")
    evaluations = opts.steps if opts.steps != -1 else SAMPLERS[opts.sampler].default_evaluations
    if evaluations > SAMPLERS[opts.sampler].evaluations(num_timesteps):
        raise ValueError(f"--steps {evaluations} exceeds the model's {num_timesteps} diffusion steps")
    steps = SAMPLERS[opts.sampler].steps_for(evaluations) if evaluations else num_timesteps
    grid = grid_of(opts)
    if grid != "uniform":
        return f"{grid}{min(steps, num_timesteps)}"
    if steps >= num_timesteps:
        return ""
    return f"ddim{steps}" if opts.sampler == "ddim" else str(steps)


def grid_of(opts: SampleOptions) -> str:
    """The step grid ``opts`` samples on: --grid, or with 'auto' the sampler's own."""
    return SAMPLERS[opts.sampler].default_grid if opts.grid == "auto" else opts.grid


def describe_sampler(opts: SampleOptions, diffusion) -> str:
    spec = SAMPLERS[opts.sampler]
    steps = diffusion.num_timesteps
    text = f"{opts.sampler}, {steps} steps ({spec.evaluations(steps)} network evaluations), {grid_of(opts)} grid"
    if opts.sampler == "ddim":
        text += f", eta {opts.eta:g}"
    return text


def load_for_sampling(model_path, overrides: Optional[Dict] = None, use_ema: Optional[bool] = None,
                      ema_rate: Optional[str] = None, device="cpu"):
    """
    Rebuild a model from a checkpoint's stored configuration.

    :param overrides: flat configuration fields given on the command line (they win).
    :param use_ema: load EMA weights; None = EMA when the checkpoint has them.
    :param ema_rate: which EMA rate; None = the slowest (largest) one stored.
    :return: (cfg, model in eval mode, description of the weights loaded).
    """
    state = load_checkpoint(model_path)
    cfg = apply_overrides(Config.from_dict(state["config"]), overrides or {})
    validate(cfg)
    rates = sorted(state.get("ema", {}), key=float)
    use_ema = bool(rates) if use_ema is None else use_ema
    if use_ema:
        if not rates:
            raise ValueError(f"--use_ema: checkpoint {model_path} holds no EMA weights")
        rate = ema_rate if ema_rate is not None else rates[-1]
        if rate not in state["ema"]:
            raise ValueError(f"--ema_rate {rate}: checkpoint {model_path} holds EMA rates {rates}")
        weights, desc = state["ema"][rate], f"EMA {rate}"
    else:
        weights, desc = state["model"], "raw weights"
    model = create_model(cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"the model flags do not match the weights in {model_path} "
                         f"(drop the overriding model flags): {str(e).splitlines()[0]} ...") from e
    model = model.to(device).eval()
    if cfg.train.channels_last:
        model = to_channels_last(model)
    return cfg, model, f"{desc} at step {state['step']}"


def task_mask(task: str, batch: int, seq_len: int, num_cond_frames: int, cond_frames: str) -> torch.Tensor:
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


def validate_options(cfg: Config, opts: SampleOptions) -> None:
    seq_len = cfg.model.seq_len
    if opts.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {opts.batch_size}")
    if opts.num_samples < 0:
        raise ValueError(f"--num_samples must be >= 0 (0 = one per test video), got {opts.num_samples}")
    if opts.num_frames < 0:
        raise ValueError(f"--num_frames must be >= 0 (0 = the model's seq_len), got {opts.num_frames}")
    window = min(seq_len, opts.num_frames or seq_len)
    task_mask(opts.task, 1, window, opts.num_cond_frames, opts.cond_frames)  # raises on bad frames
    if opts.num_frames > seq_len:
        if opts.task == "infill":
            raise ValueError("--num_frames beyond seq_len works with --task prediction or generation")
        if not 1 <= context_frames_of(cfg, opts) < seq_len:
            raise ValueError(f"--context_frames {opts.context_frames} must be in [1, {seq_len}): a window of "
                             f"{seq_len} frames must hold its context and at least one new frame")
    if opts.eta < 0:
        raise ValueError(f"--eta must be >= 0, got {opts.eta}")
    if opts.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {opts.seed}")


def context_frames_of(cfg: Config, opts: SampleOptions) -> int:
    return opts.context_frames or cfg.model.seq_len // 2


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
    return create_dataset(cfg, data_dir=data_dir, seq_len=num_frames, windows=windows, seed_offset=0x7E57,
                          skip_bad=skip_bad)


def to_uint8(videos: torch.Tensor) -> np.ndarray:
    """[N, C, T, H, W] in [-1, 1] -> uint8 [N, T, H, W, C]."""
    return ((videos + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


def sampling_diffusion(cfg: Config, opts: SampleOptions):
    """
    The (respaced) diffusion process that ``opts.sampler`` with ``opts.steps`` steps walks.
    A model trained on a respaced process samples on the same steps unless --steps is given.
    """
    if cfg.diffusion.timestep_respacing and opts.steps == -1:
        return create_diffusion(cfg)
    return create_diffusion(cfg, sampling_respacing(opts, cfg.diffusion.diffusion_steps))


def generate(cfg: Config, model, opts: SampleOptions, ctx: dist_util.DistContext, progress: bool = False):
    """
    This rank's share of the samples: sample s of test video v is item v * S + s
    (S = ``opts.samples_per_video``), drawn with the seed (opts.seed, v, s) and the given
    frames of test video v, so the result does not depend on the number of ranks.

    :return: (dict of item -> (sample uint8 [T, H, W, C], gt uint8 or None, obs_mask [T]),
        the number of test videos (or generated videos) V; items run over V * S,
        the (path, reason) of test files left out by --skip_bad_videos).
    """
    validate_options(cfg, opts)
    conditioning = resolve_conditioning(cfg, opts)
    diffusion = sampling_diffusion(cfg, opts)
    num_frames = opts.num_frames or cfg.model.seq_len
    # The network is convolutional in time, so a shorter clip is one window of num_frames;
    # a longer one is rolled out window by window.
    seq_len = min(cfg.model.seq_len, num_frames)
    data = (test_dataset(cfg, num_frames, opts.data_dir, opts.deterministic, opts.skip_bad_videos)
            if opts.task != "generation" else None)
    channels = 3 if cfg.model.rgb else 1
    size = cfg.model.image_size
    num_videos = resolve_num_samples(opts, data)
    per_video = opts.samples_per_video
    items = num_videos * per_video
    # Whole global batches go to ranks round-robin: each video is computed beside the same
    # neighbours on any number of ranks, so the kernels, and the file, are bit-identical.
    all_batches = [list(range(s, min(s + opts.batch_size, items))) for s in range(0, items, opts.batch_size)]
    batches = [all_batches[b] for b in eval_shard(len(all_batches), ctx.rank, ctx.world_size)]
    out = {}
    if progress:
        import sys

        from tqdm import tqdm
        # in a log file (no terminal) a line every 30 s, each with the time left
        batches = tqdm(batches, desc="sampling batches", mininterval=1 if sys.stderr.isatty() else 30)
    for idx in batches:
        n = len(idx)
        videos_of = [i // per_video for i in idx]
        gens = [torch.Generator(device=ctx.device).manual_seed(seed_of(opts.seed, i // per_video, i % per_video))
                for i in idx]
        test_items = [data[v] for v in videos_of] if data is not None else None
        gt = torch.stack([it["video"] for it in test_items]).to(ctx.device) if test_items else None
        model_kwargs = {}
        if cfg.model.num_classes:  # labels of the test videos, or drawn from each video's seed
            model_kwargs["y"] = torch.tensor([it["y"] for it in test_items] if test_items and "y" in test_items[0]
                                             else [seed_of(opts.seed, v, 0xC1A55) % cfg.model.num_classes
                                                   for v in videos_of], device=ctx.device)
        mask = task_mask(opts.task, n, seq_len, opts.num_cond_frames, opts.cond_frames).to(ctx.device)

        def window(x_known, obs_mask, _w=None):
            with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=opts.precision == "bf16"):
                return sample(diffusion, model, (n, channels, seq_len, size, size), gens, obs_mask=obs_mask,
                              x_known=x_known, sampler=opts.sampler, eta=opts.eta, conditioning=conditioning,
                              resample_steps=opts.resample_steps, guidance_scale=opts.guidance_scale,
                              model_kwargs=model_kwargs, device=ctx.device).float()

        if num_frames <= seq_len:
            videos = window(gt, mask)
            full_mask = mask
        else:
            given = opts.num_cond_frames if opts.task == "prediction" else 0
            context = gt if gt is not None else torch.zeros(n, channels, 0, size, size, device=ctx.device)
            videos = rollout(window, context, given, num_frames, seq_len, context_frames_of(cfg, opts))
            full_mask = torch.zeros(n, num_frames, device=ctx.device)
            full_mask[:, :given] = 1
        samples_u8 = to_uint8(videos)
        gt_u8 = to_uint8(gt) if gt is not None else None
        for j, i in enumerate(idx):
            out[i] = (samples_u8[j], None if gt_u8 is None else gt_u8[j], full_mask[j].cpu().numpy().astype(np.uint8))
    return out, num_videos, [(str(p), r) for p, r in getattr(data, "skipped", [])]


def resolve_num_samples(opts: SampleOptions, data) -> int:
    """--num_samples 0 means one sample per test video; more samples than test videos is an error."""
    if opts.samples_per_video < 1:
        raise ValueError(f"--samples_per_video must be >= 1, got {opts.samples_per_video}")
    if opts.num_samples == 0:
        if data is None:
            raise ValueError("--num_samples 0 (one per test video) needs a conditioning task")
        return len(data)
    if data is not None and opts.num_samples > len(data):
        raise ValueError(f"--num_samples {opts.num_samples} exceeds the {len(data)} test videos; each sample "
                         "takes its own video (use --num_samples 0 for one per video)")
    return opts.num_samples


def gather_samples(ctx: dist_util.DistContext, mine: Dict, num_items: int):
    """Every rank calls this; rank 0 gets (samples, gt or None, obs_mask) in item order, others None."""
    parts = dist_util.all_gather_object(ctx, mine)
    if not ctx.is_main:
        return None
    merged = {}
    for p in parts:
        merged.update(p)
    missing = sorted(set(range(num_items)) - set(merged))
    if missing:
        raise RuntimeError(f"samples {missing[:10]} were produced by no rank")
    order = range(num_items)
    samples = np.stack([merged[i][0] for i in order])
    gt = None if merged[0][1] is None else np.stack([merged[i][1] for i in order])
    masks = np.stack([merged[i][2] for i in order])
    return samples, gt, masks


def check_output_folder(path, flag: str) -> None:
    """An output folder may exist or be created, but not be a file (or lie below one)."""
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"{flag} {str(path)!r}: {str(p)!r} is a file, not a folder")
            return


def new_output_dir(parent, task: str) -> Path:
    """
    A fresh folder ``<parent>/<NNN>_<task>`` (the next free number), so that no run ever
    overwrites the files of an earlier one.
    """
    parent = Path(parent)
    check_output_folder(parent, "--out_dir")
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name.split("_")[0]) for p in parent.iterdir() if p.is_dir() and p.name.split("_")[0].isdigit()]
    number = max(taken, default=-1) + 1
    while True:  # mkdir without exist_ok: two runs started together cannot take the same folder
        path = parent / f"{number:03d}_{task}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            number += 1


def save_samples(out_dir, samples: np.ndarray, gt: Optional[np.ndarray], obs_mask: np.ndarray,
                 options: Optional[Dict] = None) -> Path:
    """
    Write samples_<N>x<T>x<H>x<W>x<C>.npz (arr_0, plus gt and obs_mask when conditioned) via
    a temp name, and ``options`` (what produced it) as sample_options.json beside it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"samples_{'x'.join(map(str, samples.shape))}.npz"
    arrays = {"arr_0": samples}
    if gt is not None:
        arrays.update(gt=gt, obs_mask=obs_mask)
    write_npz(path, **arrays)
    if options is not None:
        write_json(out_dir / "sample_options.json", options)
    return path


def mp4_available() -> bool:
    """MP4 previews need imageio with its ffmpeg plugin (pip install imageio imageio-ffmpeg)."""
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("imageio", "imageio_ffmpeg"))


def save_previews(out_dir, samples: np.ndarray, obs_mask: np.ndarray, count: int, fps: int = 8) -> List[Path]:
    """
    The first ``count`` videos as animated GIFs and PNG strips (all frames in a row, given
    frames outlined in red), plus MP4 when imageio with imageio-ffmpeg is installed.
    """
    out_dir = Path(out_dir)
    written = []
    for i in range(min(count, len(samples))):
        written.append(save_gif(out_dir / f"sample_{i:04d}.gif", samples[i], fps))
        png = out_dir / f"sample_{i:04d}.png"
        strip(samples[i], obs_mask[i]).save(png)
        written.append(png)
        if mp4_available():
            import imageio.v3 as iio
            mp4 = out_dir / f"sample_{i:04d}.mp4"
            video = samples[i] if samples.shape[-1] == 3 else np.repeat(samples[i], 3, axis=-1)
            iio.imwrite(mp4, video, fps=fps)
            written.append(mp4)
    return written
