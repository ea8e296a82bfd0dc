"""
Sampling from a checkpoint: rebuild the model from its stored configuration, build the
task's frame mask, split the videos across ranks and write the sample file.

Video i (global index) takes its noise from a generator seeded by (seed, i) and its
given frames from test video i, so the sample file is the same on 1 rank or 8.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from . import dist_util
from .build import create_diffusion, create_model
from .checkpoint import load_checkpoint
from .config import Config, apply_overrides, parse_int_list, validate
from .data import create_dataset, eval_shard, seed_of
from .masking import frames_mask, prediction_mask, unconditional_mask
from .sampling import rollout, sample

TASKS = ("prediction", "infill", "generation")


@dataclass
class SampleOptions:
    task: str = "prediction"
    num_cond_frames: int = 1
    cond_frames: str = ""
    num_samples: int = 8
    batch_size: int = 4
    seed: int = 0
    sampler: str = "ddpm"
    eta: float = 0.0
    conditioning: str = "auto"
    resample_steps: int = 1
    guidance_scale: float = 1.0
    num_frames: int = 0
    context_frames: int = 0
    data_dir: str = ""
    deterministic: str = "first"


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
        model = model.to(memory_format=torch.channels_last_3d)
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


def context_frames_of(cfg: Config, opts: SampleOptions) -> int:
    return opts.context_frames or cfg.model.seq_len // 2


def test_dataset(cfg: Config, num_frames: int, data_dir: str = "", windows: str = "first"):
    """
    Videos that provide the given frames and the ground truth: the folder ``data_dir``
    (``windows`` "first": the first window of each video; "all": every non-overlapping
    window), or held-out embedded videos for a model trained on embedded data.
    """
    if not data_dir and cfg.train.data_dir:
        raise ValueError(f"this model was trained on --data_dir {cfg.train.data_dir!r}: give --data_dir with "
                         "the videos whose frames condition the samples (e.g. the test split)")
    if windows not in ("first", "all"):
        raise ValueError(f"--deterministic must be 'first' or 'all', got {windows!r}")
    return create_dataset(cfg, data_dir=data_dir, seq_len=num_frames, windows=windows, seed_offset=0x7E57)


def to_uint8(videos: torch.Tensor) -> np.ndarray:
    """[N, C, T, H, W] in [-1, 1] -> uint8 [N, T, H, W, C]."""
    return ((videos + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


def generate(cfg: Config, model, opts: SampleOptions, ctx: dist_util.DistContext, progress: bool = False):
    """
    This rank's share of the samples.

    :return: (dict of global index -> (sample uint8 [T, H, W, C], gt uint8 or None, obs_mask [T]),
        the total number of samples over all ranks).
    """
    validate_options(cfg, opts)
    conditioning = resolve_conditioning(cfg, opts)
    diffusion = create_diffusion(cfg)
    num_frames = opts.num_frames or cfg.model.seq_len
    # The network is convolutional in time, so a shorter clip is one window of num_frames;
    # a longer one is rolled out window by window.
    seq_len = min(cfg.model.seq_len, num_frames)
    data = test_dataset(cfg, num_frames, opts.data_dir, opts.deterministic) if opts.task != "generation" else None
    channels = 3 if cfg.model.rgb else 1
    size = cfg.model.image_size
    num_samples = resolve_num_samples(opts, data)
    # Whole global batches go to ranks round-robin: each video is computed beside the same
    # neighbours on any number of ranks, so the kernels, and the file, are bit-identical.
    all_batches = [list(range(s, min(s + opts.batch_size, num_samples))) for s in range(0, num_samples, opts.batch_size)]
    batches = [all_batches[b] for b in eval_shard(len(all_batches), ctx.rank, ctx.world_size)]
    out = {}
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc="batches")
    for idx in batches:
        n = len(idx)
        gens = [torch.Generator(device=ctx.device).manual_seed(seed_of(opts.seed, i)) for i in idx]
        items = [data[i] for i in idx] if data is not None else None
        gt = torch.stack([it["video"] for it in items]).to(ctx.device) if items else None
        model_kwargs = {}
        if cfg.model.num_classes:  # labels of the test videos, or drawn from each video's seed
            model_kwargs["y"] = torch.tensor([it["y"] for it in items] if items and "y" in items[0] else
                                             [seed_of(opts.seed, i, 0xC1A55) % cfg.model.num_classes for i in idx],
                                             device=ctx.device)
        mask = task_mask(opts.task, n, seq_len, opts.num_cond_frames, opts.cond_frames).to(ctx.device)

        def window(x_known, obs_mask, _w=None):
            return sample(diffusion, model, (n, channels, seq_len, size, size), gens, obs_mask=obs_mask,
                          x_known=x_known, sampler=opts.sampler, eta=opts.eta, conditioning=conditioning,
                          resample_steps=opts.resample_steps, guidance_scale=opts.guidance_scale,
                          model_kwargs=model_kwargs, progress=progress, device=ctx.device)

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
    return out, num_samples


def resolve_num_samples(opts: SampleOptions, data) -> int:
    """--num_samples 0 means one sample per test video; more samples than test videos is an error."""
    if opts.num_samples == 0:
        if data is None:
            raise ValueError("--num_samples 0 (one per test video) needs a conditioning task")
        return len(data)
    if data is not None and opts.num_samples > len(data):
        raise ValueError(f"--num_samples {opts.num_samples} exceeds the {len(data)} test videos; each sample "
                         "takes its own video (use --num_samples 0 for one per video)")
    return opts.num_samples


def gather_samples(ctx: dist_util.DistContext, mine: Dict, num_samples: int):
    """Every rank calls this; rank 0 gets (samples, gt or None, obs_mask) in global order, others None."""
    parts = dist_util.all_gather_object(ctx, mine)
    if not ctx.is_main:
        return None
    merged = {}
    for p in parts:
        merged.update(p)
    missing = sorted(set(range(num_samples)) - set(merged))
    if missing:
        raise RuntimeError(f"samples {missing[:10]} were produced by no rank")
    order = range(num_samples)
    samples = np.stack([merged[i][0] for i in order])
    gt = None if merged[0][1] is None else np.stack([merged[i][1] for i in order])
    masks = np.stack([merged[i][2] for i in order])
    return samples, gt, masks


def save_samples(out_dir, samples: np.ndarray, gt: Optional[np.ndarray], obs_mask: np.ndarray) -> Path:
    """Write samples_<N>x<T>x<H>x<W>x<C>.npz (arr_0, plus gt and obs_mask when conditioned) via a temp name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"samples_{'x'.join(map(str, samples.shape))}.npz"
    arrays = {"arr_0": samples}
    if gt is not None:
        arrays.update(gt=gt, obs_mask=obs_mask)
    tmp = out_dir / f".{path.name}.tmp.npz"
    np.savez(tmp, **arrays)
    tmp.replace(path)
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
    from PIL import Image, ImageDraw

    out_dir = Path(out_dir)
    written = []
    for i in range(min(count, len(samples))):
        video = samples[i]
        frames = [Image.fromarray(f.squeeze(-1) if f.shape[-1] == 1 else f).convert("RGB") for f in video]
        gif = out_dir / f"sample_{i:04d}.gif"
        frames[0].save(gif, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
        t, h, w = video.shape[:3]
        pad = 2
        strip = Image.new("RGB", (t * (w + 2 * pad), h + 2 * pad), "white")
        draw = ImageDraw.Draw(strip)
        for f, frame in enumerate(frames):
            x0 = f * (w + 2 * pad)
            if obs_mask[i][f]:
                draw.rectangle([x0, 0, x0 + w + 2 * pad - 1, h + 2 * pad - 1], fill=(220, 30, 30))
            strip.paste(frame, (x0 + pad, pad))
        png = out_dir / f"sample_{i:04d}.png"
        strip.save(png)
        written += [gif, png]
        if mp4_available():
            import imageio.v3 as iio
            mp4 = out_dir / f"sample_{i:04d}.mp4"
            iio.imwrite(mp4, np.stack([np.asarray(f) for f in frames]), fps=fps)
            written.append(mp4)
    return written


def sample_options_from(args) -> SampleOptions:
    return SampleOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SampleOptions)})
