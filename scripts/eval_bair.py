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
with video_index, sample_index and the run's id); rank 0 checks that the folder holds
exactly this run's W shards and writes bair_eval.json and grid.png beside them. Every
file is written under a temporary name and renamed when complete.

Refused before any sampling: a test set that is not the whole BAIR test split (256
videos; --allow_partial_test_set for a quick check, marked in the JSON), a test file
that cannot be read, a model whose window is shorter than the 16 frames of the protocol,
and an --out_dir that holds the results of an earlier run.
"""

import argparse
import dataclasses
from pathlib import Path

from video_diffusion import distributed
from video_diffusion.flags import str2bool
from video_diffusion.files import write_image, write_json
from video_diffusion.evaluation.quality import check_shards, evaluate, format_table
from video_diffusion.evaluation.weights import add_i3d_flags, load_i3d
from video_diffusion.files import check_output_folder
from video_diffusion.sampling.loading import load_for_sampling
from video_diffusion.sampling.options import add_sample_flags, sample_options_from
from video_diffusion.sampling.plan import resolve_plan

NUM_FRAMES, NUM_COND = 16, 1
BAIR_TEST_VIDEOS = 256


def check_out_dir(out_dir: Path) -> None:
    check_output_folder(out_dir, "--out_dir")
    earlier = sorted(p.name for p in out_dir.glob("*") if p.name.startswith("samples_shard")
                     or p.name in ("bair_eval.json", "grid.png")) if out_dir.is_dir() else []
    if earlier:
        raise ValueError(f"--out_dir {str(out_dir)!r} holds the results of an earlier run ({', '.join(earlier[:4])}"
                         f"{'...' if len(earlier) > 4 else ''}): choose another folder or move them")


def _check(fn, *args) -> str:
    """'' when ``fn(*args)`` passes, else its error message (to share a verdict across ranks)."""
    try:
        fn(*args)
        return ""
    except ValueError as e:
        return str(e)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--model_path", required=True, help="checkpoint written by video_train.py")
    p.add_argument("--use_ema", type=str2bool, nargs="?", const=True, default=None)
    add_i3d_flags(p)
    p.add_argument("--out_dir", default="bair_eval", help="where the sample shards and bair_eval.json go")
    # the protocol fixes the task; the sampler and the sample counts stay choices
    add_sample_flags(p, exclude=("task", "num_cond_frames", "cond_frames", "num_frames", "context_frames",
                                 "deterministic", "conditioning", "resample_steps", "skip_bad_videos"),
                     num_samples=0, samples_per_video=100, batch_size=64)
    p.add_argument("--allow_partial_test_set", action="store_true",
                   help=f"evaluate a test set other than the whole BAIR test split ({BAIR_TEST_VIDEOS} videos), or "
                        "--num_samples of it; the JSON then says the figures are not the protocol's")
    args = p.parse_args(argv)
    ctx = distributed.setup_dist()
    try:
        if not args.data_dir:
            raise ValueError("--data_dir: give the prepared BAIR test split (OUT/test of prepare_bair.py)")
        out_dir = Path(args.out_dir)
        # rank 0 looks at the folder before anything runs; every rank learns the verdict
        verdict = distributed.all_gather_object(ctx, _check(check_out_dir, out_dir) if ctx.is_main else "")[0]
        if verdict:
            raise ValueError(verdict)
        opts = sample_options_from(args, task="prediction", num_cond_frames=NUM_COND, num_frames=NUM_FRAMES)
        cfg, model, weights = load_for_sampling(args.model_path, None, args.use_ema, None, ctx.device)
        if not cfg.model.rgb:
            raise ValueError("the BAIR protocol needs an RGB model (FVD's I3D takes RGB clips)")
        if cfg.model.seq_len < NUM_FRAMES:
            raise ValueError(f"{args.model_path}: the model's window is {cfg.model.seq_len} frames (--seq_len); the "
                             f"protocol predicts {NUM_FRAMES - NUM_COND} frames from {NUM_COND} in one window of "
                             f"{NUM_FRAMES}")
        plan = resolve_plan(cfg, opts)  # every test file must be readable
        sampler = plan.describe()
        num_test, used = len(plan.data), plan.num_videos
        complete = num_test == BAIR_TEST_VIDEOS and used == num_test
        if not complete and not args.allow_partial_test_set:
            raise ValueError(f"--data_dir {args.data_dir} holds {num_test} test videos"
                             + (f" (--num_samples {opts.num_samples})" if used != num_test else "")
                             + f"; the protocol uses all {BAIR_TEST_VIDEOS} of the BAIR test split. "
                             "--allow_partial_test_set evaluates it anyway (not comparable to published numbers)")
        if used < 2:
            raise ValueError(f"--data_dir {args.data_dir}: FVD needs at least 2 test videos, found {num_test}")
        i3d = load_i3d(args.i3d_weights, ctx.device, args.i3d_torchscript)
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            print(f"BAIR 1 -> 15: {used} of {num_test} test video(s) x {opts.samples_per_video} samples "
                  f"with {weights}, sampler {sampler}, on {ctx.world_size} rank(s)"
                  + ("" if complete else " -- NOT the full protocol"), flush=True)
        distributed.barrier(ctx)
        result = evaluate(cfg, model, plan, ctx, i3d=i3d, shard_dir=out_dir,
                          progress=ctx.is_main)
        if ctx.is_main:
            check_shards(out_dir, ctx.world_size, result["run_id"])
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        distributed.cleanup(ctx)
        p.exit(2, f"{p.prog}: error: {e}\n")
    if ctx.is_main:
        m = result["metrics"]
        m.update(sampler=sampler, weights=weights, model_path=str(args.model_path), cond_frames=NUM_COND,
                 options=dataclasses.asdict(opts), protocol_complete=complete, test_videos_in_data_dir=num_test)
        write_json(out_dir / "bair_eval.json", m)
        write_image(out_dir / "grid.png", result["grid"])
        print(format_table(m))
        if "fvd_per_sample_index_mean" in m:
            print(f"mean of the per-sample-index FVDs: {m['fvd_per_sample_index_mean']:.4f}")
        print(f"wrote {out_dir / 'bair_eval.json'}")
        print(f"FVD: {m['fvd']:.4f}")
    distributed.cleanup(ctx)


if __name__ == "__main__":
    main()
