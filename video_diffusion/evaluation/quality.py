"""
The quality harness: sample a task on held-out videos and measure what came out.

For each test video the generated frames (those not given) are compared with the ground
truth: the mean squared error over their pixels and SSIM averaged over them. The PSNR of a
set comes from its mean squared error over all generated frames (``metrics.psnr_of_mse``), the
SSIM is the mean; with S samples per video all samples together and each video's best sample
(lowest error, highest SSIM) are reported. Two
trivial predictors are scored the same way, so a number always has a floor beside it:

- "copy last given": each generated frame is the latest given frame before it (the
  first given frame after it when none comes before);
- "black": every generated frame is black.

FVD compares all frames of every sample with the real test clips through the I3D
network (RGB; grayscale is repeated to three channels; I3D needs >= 10 frames).

Work is split over ranks as sampling is (sample s of video v is seeded by (seed, v, s)),
metrics and I3D features are computed where the samples are, and only they travel to
rank 0, so 100 samples x 256 BAIR videos never have to fit on one process.
"""

import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from .. import distributed
from ..files import write_npz
from ..data import eval_shard
from ..sampling.generate import generate
from ..sampling.outputs import to_uint8
from ..sampling.plan import SamplingPlan, test_dataset
from ..visualize import auto_scale, grid, strip
from .fvd import fvd_from_features, i3d_features
from .metrics import best_and_mean, mse, psnr_best_and_mean, psnr_of_mse, ssim

MIN_FVD_FRAMES = 10


def copy_last_given(gt: np.ndarray, obs_mask: np.ndarray) -> np.ndarray:
    """
    The "copy last given frame" baseline of one video.

    :param gt: uint8 [T, H, W, C] ground truth.
    :param obs_mask: [T], 1 on given frames (at least one).
    :return: uint8 [T, H, W, C]: given frames as they are; every other frame a copy of the
        latest given frame before it, or of the first given frame after it.
    """
    given = np.flatnonzero(obs_mask)
    if not len(given):
        raise ValueError("the copy-last-given baseline needs at least one given frame")
    source = [given[given <= f].max() if (given <= f).any() else given.min() for f in range(len(gt))]
    return gt[source]


def video_scores(pred: np.ndarray, gt: np.ndarray, obs_mask: np.ndarray):
    """
    (mean squared error, SSIM) of one video over its generated frames (obs_mask 0): the
    error over all their pixels in 8-bit units, SSIM averaged over the frames.
    """
    gen = np.flatnonzero(np.asarray(obs_mask) == 0)
    p, g = torch.from_numpy(pred[gen]), torch.from_numpy(gt[gen])
    return float(mse(p, g).mean()), float(ssim(p, g).mean())


def set_scores(per_video) -> Dict[str, float]:
    """
    {"psnr", "ssim"} of a set from its videos' ``video_scores`` (each with as many generated
    frames): PSNR from the mean squared error over the whole set, SSIM the mean.
    """
    per_video = np.asarray(per_video, dtype=np.float64).reshape(-1, 2)
    return {"psnr": psnr_of_mse(per_video[:, 0].mean()), "ssim": float(per_video[:, 1].mean())}


def _rgb(videos: np.ndarray) -> np.ndarray:
    return videos if videos.shape[-1] == 3 else np.repeat(videos, 3, axis=-1)


def _stack(arrays: List[np.ndarray], shape_tail) -> np.ndarray:
    return np.stack(arrays) if arrays else np.zeros((0, *shape_tail))


def evaluate(cfg, model, plan: SamplingPlan, ctx: distributed.DistContext, i3d=None, grid_videos: int = 8,
             shard_dir: Optional[Path] = None, progress: bool = False,
             real_features_cache: Optional[Dict] = None) -> Optional[Dict]:
    """
    Sample ``plan`` and score the samples. Every rank calls this; rank 0 gets the results.

    :param i3d: the I3D network for FVD, or None to leave FVD out.
    :param grid_videos: how many test videos rank 0 receives for the picture.
    :param shard_dir: if given, each rank writes its samples there as
        samples_shard<r>of<W>.npz (arr_0, video_index, sample_index).
    :param real_features_cache: a dict kept by the caller across calls: the real clips' I3D
        features are computed once per (clips, rank) instead of once per call.
    :return: on rank 0 a dict with "metrics" (JSON-ready), "grid" (a PIL image) and "shown"
        (item -> (sample, ground truth or None, obs_mask) of the videos in the grid); None elsewhere.
    """
    opts, num_videos, skipped = plan.options, plan.num_videos, plan.skipped
    start = time.perf_counter()
    mine = generate(model, plan, ctx, progress=progress)
    seconds = time.perf_counter() - start
    per_video = opts.samples_per_video
    keys = sorted(mine)
    conditioned = opts.task != "generation"
    rows = []  # (item, mse, ssim) of this rank's samples
    baselines = []  # (video, copy mse, copy ssim, black mse, black ssim) of this rank's sample-0 videos
    for i in keys:
        sample_u8, gt_u8, mask = mine[i]
        if conditioned:
            rows.append((i, *video_scores(sample_u8, gt_u8, mask)))
            if i % per_video == 0:
                baselines.append((i // per_video, *video_scores(copy_last_given(gt_u8, mask), gt_u8, mask),
                                  *video_scores(np.zeros_like(gt_u8), gt_u8, mask)))
    samples = _stack([mine[i][0] for i in keys], ())
    run_id = distributed.all_gather_object(ctx, uuid.uuid4().hex)[0]  # rank 0's: names this run in every shard
    if shard_dir is not None:
        write_npz(Path(shard_dir) / shard_name(ctx.rank, ctx.world_size), arr_0=samples,
                  video_index=np.array([i // per_video for i in keys], dtype=np.int64),
                  sample_index=np.array([i % per_video for i in keys], dtype=np.int64), run_id=np.array(run_id))
    num_frames = samples.shape[1] if len(samples) else (opts.num_frames or cfg.model.seq_len)
    fvd_possible = i3d is not None and num_frames >= MIN_FVD_FRAMES
    features = real_features = None
    if fvd_possible:
        # the real clips: the test videos themselves (or, for generation, as many held-out ones)
        real_ids = eval_shard(num_videos, ctx.rank, ctx.world_size)
        key = (cfg.train.data_dir, opts.data_dir, opts.deterministic, num_frames, num_videos, ctx.rank,
               ctx.world_size, cfg.model.image_size, cfg.model.rgb)
        cache = real_features_cache if real_features_cache is not None else {}
        if key not in cache:
            real_data = test_dataset(cfg, num_frames, opts.data_dir, opts.deterministic, opts.skip_bad_videos)
            if len(real_data) < num_videos:
                raise ValueError(f"FVD needs {num_videos} real videos, the test set holds {len(real_data)}")
            real = _stack([to_uint8(real_data[v]["video"][None])[0] for v in real_ids], ())
            cache[key] = i3d_features(i3d, _rgb(real), device=ctx.device) if len(real) else np.zeros((0, 400))
        features = i3d_features(i3d, _rgb(samples), device=ctx.device) if len(samples) else np.zeros((0, 400))
        real_features = (cache[key], real_ids)
    shown = {i: mine[i] for i in keys if i // per_video < grid_videos and i % per_video < 2}
    parts = distributed.all_gather_object(ctx, dict(rows=rows, baselines=baselines, keys=keys, seconds=seconds,
                                                  features=features, real=real_features, shown=shown))
    if not ctx.is_main:
        return None
    distributed.check_covered([k for p in parts for k in p["keys"]], num_videos * per_video)
    metrics = {"task": opts.task, "num_videos": num_videos, "samples_per_video": per_video,
               "num_frames": num_frames, "seconds": max(p["seconds"] for p in parts),
               "sample_seconds_per_video": max(p["seconds"] for p in parts) * ctx.world_size
               / (num_videos * per_video), "world_size": ctx.world_size,
               "skipped_test_videos": [{"path": n, "reason": r} for n, r in skipped]}
    if conditioned:
        scores = sorted(r for p in parts for r in p["rows"])
        errors = torch.tensor([r[1] for r in scores], dtype=torch.float64).reshape(num_videos, per_video)
        ss = torch.tensor([r[2] for r in scores], dtype=torch.float64).reshape(num_videos, per_video)
        metrics["psnr_definition"] = "from the mean squared error over all generated frames of the set"
        metrics["psnr_mean"], metrics["psnr_best"] = psnr_best_and_mean(errors)
        metrics["ssim_mean"], metrics["ssim_best"] = best_and_mean(ss)
        metrics["mse_mean"] = float(errors.mean())
        metrics["ssim_std_over_videos"] = float(ss.mean(dim=1).std()) if num_videos > 1 else 0.0
        base = np.array(sorted(b for p in parts for b in p["baselines"]))
        metrics["baselines"] = {"copy_last_given": set_scores(base[:, 1:3]), "black": set_scores(base[:, 3:5])}
    if fvd_possible:
        order = np.argsort(np.concatenate([np.array(p["keys"], dtype=np.int64) for p in parts]))
        feats = np.concatenate([p["features"] for p in parts])[order]
        real_order = np.argsort(np.concatenate([np.array(p["real"][1], dtype=np.int64) for p in parts]))
        real_feats = np.concatenate([p["real"][0] for p in parts])[real_order]
        metrics["fvd"] = fvd_from_features(feats, real_feats)
        metrics["fvd_num_real"] = len(real_feats)
        if per_video > 1:
            per_index = [fvd_from_features(feats.reshape(num_videos, per_video, -1)[:, s], real_feats)
                         for s in range(per_video)]
            metrics["fvd_per_sample_index"] = per_index
            metrics["fvd_per_sample_index_mean"] = float(np.mean(per_index))
    elif i3d is not None:
        metrics["fvd_skipped"] = f"I3D needs >= {MIN_FVD_FRAMES} frames, the clips have {num_frames}"
    shown = {k: v for p in parts for k, v in p["shown"].items()}
    return {"metrics": metrics, "grid": comparison_grid(shown, per_video), "shown": shown, "run_id": run_id}


def shard_name(rank: int, world_size: int) -> str:
    return f"samples_shard{rank}of{world_size}.npz"


def check_shards(shard_dir, world_size: int, run_id: str) -> None:
    """The folder must hold exactly this run's shards: one per rank, all of run ``run_id``."""
    shard_dir = Path(shard_dir)
    found = sorted(p.name for p in shard_dir.glob("samples_shard*of*.npz"))
    expected = sorted(shard_name(r, world_size) for r in range(world_size))
    if found != expected:
        raise RuntimeError(f"{shard_dir}: expected the shards {expected}, found {found}")
    for name in expected:
        with np.load(shard_dir / name) as z:
            if "run_id" not in z.files or str(z["run_id"]) != run_id:
                raise RuntimeError(f"{shard_dir / name} belongs to another run")


def comparison_grid(shown: Dict, per_video: int):
    """One block per test video: its ground truth (if any) above its samples; given frames outlined."""
    if not shown:
        return None
    blocks = []
    size = next(iter(shown.values()))[0].shape[1]
    scale = auto_scale(size)
    for v in sorted({i // per_video for i in shown}):
        items = [shown[i] for i in sorted(shown) if i // per_video == v]
        block = []
        if items[0][1] is not None:
            block.append(strip(items[0][1], items[0][2], scale))
        block += [strip(sample_u8, mask, scale) for sample_u8, _, mask in items]
        blocks.append(block)
    return grid(blocks)


def format_table(metrics: Dict) -> str:
    """The harness's results as a small text table."""
    lines = [f"{'':22s} {'PSNR (dB)':>10s} {'SSIM':>7s}   (PSNR from the MSE over all generated frames)"]
    if "psnr_mean" in metrics:
        lines.append(f"{'model':22s} {metrics['psnr_mean']:10.2f} {metrics['ssim_mean']:7.3f}")
        if metrics["samples_per_video"] > 1:
            lines.append(f"{'model, best of ' + str(metrics['samples_per_video']):22s} "
                         f"{metrics['psnr_best']:10.2f} {metrics['ssim_best']:7.3f}")
        for name, label in (("copy_last_given", "copy last given frame"), ("black", "black frame")):
            b = metrics["baselines"][name]
            lines.append(f"{label:22s} {b['psnr']:10.2f} {b['ssim']:7.3f}")
    else:
        lines = []
    if "fvd" in metrics:
        lines.append(f"FVD {metrics['fvd']:.1f} against {metrics['fvd_num_real']} real clips")
    elif "fvd_skipped" in metrics:
        lines.append(f"FVD not computed: {metrics['fvd_skipped']}")
    lines.append(f"{metrics['sample_seconds_per_video']:.2f} s per video")
    skipped = metrics.get("skipped_test_videos") or []
    if skipped:
        lines.append(f"{len(skipped)} test video(s) left out by --skip_bad_videos: "
                     + ", ".join(s["path"] for s in skipped[:5]) + ("..." if len(skipped) > 5 else ""))
    return "\n".join(lines)
