"""
The BAIR robot pushing prediction protocol: condition on 1 frame, predict 15.

    python scripts/eval_bair.py --model_path runs/bair/ckpt_0500000.pt --data_dir data/bair/test
    mpiexec -n 8 python scripts/eval_bair.py --model_path CKPT --data_dir data/bair/test --batch_size 64

For each test video (frames 0..15; the 256 of data/bair/test as prepared by
datasets/prepare_bair.py), --samples_per_video predictions of frames 1..15 are drawn from
frame 0, through the quality harness of scripts/evaluate.py. Reported: FVD over all 16
frames (conditioning frame included) of all samples against the real clips; the mean of
the per-sample-index FVDs (sample s of every video against the real clips); PSNR and SSIM
of the predicted frames, mean and best-of-N, beside the copy-last-frame and black
baselines. Test videos are split over the ranks so that each is used exactly once. Rank r
writes its samples to samples_shard<r>of<W>.npz (arr_0 uint8 [videos x samples, 16, H, W, 3],
with video_index and sample_index); rank 0 writes bair_eval.json and grid.png beside them.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from video_diffusion import dist_util
from video_diffusion.config import str2bool
from video_diffusion.evaluation.quality import evaluate, format_table
from video_diffusion.evaluation.weights import add_i3d_flags, load_i3d
from video_diffusion.sample_util import (add_sample_flags, describe_sampler, load_for_sampling, sample_options_from,
                                        sampling_diffusion, test_dataset, validate_options)

NUM_FRAMES, NUM_COND = 16, 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--model_path", required=True, help="checkpoint written by video_train.py")
    p.add_argument("--use_ema", type=str2bool, nargs="?", const=True, default=None)
    add_i3d_flags(p)
    p.add_argument("--out_dir", default="bair_eval", help="where the sample shards and bair_eval.json go")
    # the protocol fixes the task; the sampler and the sample counts stay choices
    add_sample_flags(p, exclude=("task", "num_cond_frames", "cond_frames", "num_frames", "context_frames",
                                 "deterministic", "conditioning", "resample_steps"),
                     num_samples=0, samples_per_video=100, batch_size=64)
    args = p.parse_args(argv)
    ctx = dist_util.setup_dist()
    try:
        if not args.data_dir:
            raise ValueError("--data_dir: give the prepared BAIR test split (OUT/test of prepare_bair.py)")
        opts = sample_options_from(args, task="prediction", num_cond_frames=NUM_COND, num_frames=NUM_FRAMES)
        cfg, model, weights = load_for_sampling(args.model_path, None, args.use_ema, None, ctx.device)
        if not cfg.model.rgb:
            raise ValueError("the BAIR protocol needs an RGB model (FVD's I3D takes RGB clips)")
        validate_options(cfg, opts)
        sampler = describe_sampler(opts, sampling_diffusion(cfg, opts))
        i3d = load_i3d(args.i3d_weights, ctx.device, args.i3d_torchscript)
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if ctx.is_main:
            print(f"BAIR 1 -> 15: {opts.num_samples or 'every'} test video(s) x {opts.samples_per_video} samples "
                  f"with {weights}, sampler {sampler}, on {ctx.world_size} rank(s)", flush=True)
        num_test = len(test_dataset(cfg, NUM_FRAMES, args.data_dir))
        if min(opts.num_samples or num_test, num_test) < 2:
            raise ValueError(f"--data_dir {args.data_dir}: FVD needs at least 2 test videos, found {num_test}")
        result = evaluate(cfg, model, opts, ctx, i3d=i3d, shard_dir=out_dir,
                          progress=ctx.is_main and sys.stderr.isatty())
    except (ValueError, FileNotFoundError) as e:
        dist_util.cleanup(ctx)
        p.exit(2, f"{p.prog}: error: {e}\n")
    if ctx.is_main:
        m = result["metrics"]
        m.update(sampler=sampler, weights=weights, model_path=str(args.model_path), cond_frames=NUM_COND,
                 options=dataclasses.asdict(opts))
        (out_dir / "bair_eval.json").write_text(json.dumps(m, indent=1))
        result["grid"].save(out_dir / "grid.png")
        print(format_table(m))
        if "fvd_per_sample_index_mean" in m:
            print(f"mean of the per-sample-index FVDs: {m['fvd_per_sample_index_mean']:.4f}")
        print(f"wrote {out_dir / 'bair_eval.json'}")
        print(f"FVD: {m['fvd']:.4f}")
    dist_util.cleanup(ctx)


if __name__ == "__main__":
    main()
