"""
Sampler quality against network evaluations, on one checkpoint and one task.

    python scripts/compare_samplers.py --model_path runs/small/ckpt_0005500.pt --num_cond_frames 2

For every sampler, grid and budget of network evaluations per video it samples the same
test videos with the same seeds (through the generation code of video_sample.py) and
reports, over the generated frames:
- PSNR / SSIM against the ground truth, mean over videos, as mean +- std over --seeds (sample std, ddof 1);
- PSNR against the converged sample of the same noise (--reference_sampler with
  --reference_evaluations): how well the solver solved its equation, whatever the model's
  quality (ancestral DDPM solves another equation: its figure there is only a spread).
The table goes to stdout and, with --out_dir, to samplers.md and samplers.json (every figure),
rewritten after every row: a full grid takes hours on a CPU, so a rerun with the same --out_dir
and the same settings keeps the rows already measured and measures only the missing ones, and
a rerun with other samplers, grids or budgets adds its rows to the folder's table (other
settings there are an error naming them).
Time it on an otherwise idle machine: the seconds per video are part of the table.
"""

import argparse
import dataclasses
import sys

from video_diffusion import distributed
from video_diffusion.evaluation.quality import MIN_FVD_FRAMES
from video_diffusion.evaluation.weights import add_i3d_flags, load_i3d
from video_diffusion.flags import parse_list
from video_diffusion.sampling.loading import load_for_sampling
from video_diffusion.sampling.options import SampleOptions, add_checkpoint_flags
from video_diffusion.sampling.plan import resolve_plan
from video_diffusion.sampling.samplers import GRIDS, SAMPLERS
from video_diffusion.studies import samplers as study


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    add_checkpoint_flags(p, out_dir="")
    p.add_argument("--num_cond_frames", type=int, default=2, help="prediction: the first c frames are given")
    p.add_argument("--num_samples", type=int, default=32, help="held-out test videos")
    p.add_argument("--batch_size", type=int, default=32, help="videos per forward pass")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated samplers to compare")
    p.add_argument("--grids", default="uniform,karras", help=f"comma-separated grids ({', '.join(GRIDS)})")
    p.add_argument("--evaluations", default="5,10,20,50,100",
                   help="network evaluations per video to try (0 = every diffusion step, e.g. ancestral DDPM's "
                        "usual 1000)")
    p.add_argument("--baseline", default="ddim:50,100",
                   help="SAMPLER:E1,E2: also run this sampler (uniform grid) at these larger budgets, the "
                        "quality the others are held against")
    p.add_argument("--seeds", default="0,1,2", help="sampling seeds (the spread is over them)")
    p.add_argument("--reference_sampler", default="dpmpp_2m", choices=tuple(SAMPLERS),
                   help="the converged sample: this sampler with --reference_evaluations")
    p.add_argument("--reference_evaluations", type=int, default=250,
                   help="network evaluations of the converged sample (0 = every diffusion step)")
    p.add_argument("--fvd_videos", type=int, default=0,
                   help="also generate this many videos per sampler and seed and report their FVD against as "
                        "many held-out real clips (0 = no FVD column)")
    p.add_argument("--fvd_frames", type=int, default=16,
                   help="frames of each generated video (I3D needs >= 10; beyond the model's window the video "
                        "is rolled out window by window)")
    add_i3d_flags(p)
    args = p.parse_args(argv)
    ctx = distributed.setup_dist()
    try:
        if ctx.distributed:
            raise ValueError("run this comparison as one process (it times each sampler)")
        samplers = parse_list(args.samplers, str, "--samplers")
        grids = parse_list(args.grids, str, "--grids")
        budgets = parse_list(args.evaluations, int, "--evaluations")
        seeds = parse_list(args.seeds, int, "--seeds")
        baseline_sampler, _, spec = args.baseline.partition(":")
        baseline_budgets = parse_list(spec, int, "--baseline")
        if any(e < 0 for e in budgets + baseline_budgets):
            raise ValueError("--evaluations and --baseline budgets must be >= 0 (0 = every diffusion step)")
        bad = [s for s in samplers + ([baseline_sampler] if baseline_sampler else []) if s not in SAMPLERS] \
            + [g for g in grids if g not in GRIDS]
        if bad:
            raise ValueError(f"unknown sampler or grid: {bad}")
        cfg, model, weights = load_for_sampling(args.model_path, None, args.use_ema, args.ema_rate, ctx.device)
        base = SampleOptions(task="prediction", num_cond_frames=args.num_cond_frames, num_samples=args.num_samples,
                             batch_size=args.batch_size)
        resolve_plan(cfg, base)  # the options are checked before any sampling
        if args.fvd_videos < 0 or (args.fvd_videos and args.fvd_frames < MIN_FVD_FRAMES):
            raise ValueError(f"--fvd_videos must be >= 0 and --fvd_frames >= {MIN_FVD_FRAMES} (I3D's shortest clip)")
        generation = SampleOptions(task="generation", num_samples=args.fvd_videos, num_frames=args.fvd_frames,
                                   batch_size=args.batch_size)
        if args.fvd_videos:
            resolve_plan(cfg, generation)
        i3d = load_i3d(args.i3d_weights, ctx.device, args.i3d_torchscript) if args.fvd_videos else None
        settings = {"model_path": str(args.model_path), "weights": weights, "seeds": seeds,
                    "num_samples": args.num_samples, "num_cond_frames": args.num_cond_frames,
                    "reference_sampler": args.reference_sampler, "reference_evaluations": args.reference_evaluations,
                    "fvd_videos": args.fvd_videos, "fvd_frames": args.fvd_frames if args.fvd_videos else None}
        done = study.earlier_rows(args.out_dir, settings)
    except (ValueError, FileNotFoundError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(f"{args.model_path} ({weights}): {args.num_samples} held-out videos, {args.num_cond_frames} -> "
          f"{cfg.model.seq_len - args.num_cond_frames}, seeds {seeds}", flush=True)

    real_features = {}  # I3D features of the real clips, computed once
    references = {}

    def reference(seed):  # the converged sample of this seed's noise, drawn when first needed
        if seed not in references:
            opts = dataclasses.replace(base, sampler=args.reference_sampler, steps=args.reference_evaluations,
                                       seed=seed)
            references[seed], _ = study.run(cfg, model, opts, ctx)
        return references[seed]

    configs = [(s, g, e) for s in samplers for g in grids for e in budgets
               if not (s in ("ddim", "ddpm") and g != "uniform")]  # their uniform strides are their own
    if baseline_sampler:
        configs += [(baseline_sampler, "uniform", e) for e in baseline_budgets]
    fvd_head = f" FVD ({args.fvd_videos} generated x {args.fvd_frames} frames) |" if i3d is not None else ""
    rows = []
    for sampler, grid, evaluations in configs:
        if (sampler, grid, evaluations) in done:
            row = done[(sampler, grid, evaluations)]
            print(f"{sampler:9s} {grid:8s} {row['evaluations']:5d} evals | measured earlier in {args.out_dir}",
                  flush=True)
            rows.append(row)
            continue
        row = study.measure_row(cfg, model, ctx, base, generation, sampler, grid, evaluations, seeds, reference,
                                i3d, real_features)
        rows.append(row)
        print(f"{sampler:9s} {grid:8s} {row['evaluations']:5d} evals | PSNR {row['psnr']:6.2f} +- {row['psnr_std']:.2f} | "
              f"SSIM {row['ssim']:.3f} +- {row['ssim_std']:.3f} | to converged {row['psnr_to_converged']:6.2f} dB | "
              + (f"FVD {row['fvd']:.0f} +- {row['fvd_std']:.0f} | " if "fvd" in row else "")
              + f"{row['s_per_video']:.2f} s/video", flush=True)
        if args.out_dir:  # after every row: hours of sampling survive an interruption
            ordered = study.table_order({**done, **{study.row_key(r): r for r in rows}})  # earlier rows stay
            study.write_results(args.out_dir, settings, ordered, study.format_table(ordered, fvd_head))
    print(study.format_table(rows, fvd_head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
