"""
Sample videos from a checkpoint: prediction, infilling or unconditional generation.

    python scripts/video_sample.py --model_path runs/tiny/ckpt_0003000.pt --task prediction --num_cond_frames 2
    python scripts/video_sample.py --model_path CKPT --task infill --cond_frames 0,7 --save_gifs 4
    python scripts/video_sample.py --model_path CKPT --task generation --num_samples 16 --save_gifs 4
    python scripts/video_sample.py --model_path CKPT --sampler ddpm          # 1000 ancestral steps
    mpiexec -n 4 python scripts/video_sample.py --model_path CKPT ...        # same file as on one process

The model is rebuilt from the configuration stored in the checkpoint. Each run writes into
a new folder <out_dir>/<NNN>_<task>/ (the sample file, previews, sample_options.json), so
no run overwrites another's results.
"""

import argparse
import dataclasses
import time

from video_diffusion import distributed
from video_diffusion.config import add_config_flags, given_fields
from video_diffusion.files import check_output_folder
from video_diffusion.sampling.generate import gather_samples, generate
from video_diffusion.sampling.loading import load_for_sampling
from video_diffusion.sampling.options import add_checkpoint_flags, add_sample_flags, sample_options_from
from video_diffusion.sampling.outputs import mp4_available, new_output_dir, save_previews, save_samples
from video_diffusion.sampling.plan import context_note, resolve_plan


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    add_checkpoint_flags(p, out_dir="samples")
    p.add_argument("--save_gifs", type=int, default=0, help="write the first k videos as GIF and PNG strip")
    add_sample_flags(p)
    add_config_flags(p, groups=("model", "diffusion"), with_preset=False, exclude=("timestep_respacing",))
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = given_fields(args, groups=("model", "diffusion"))
    ctx = distributed.setup_dist()
    try:
        check_output_folder(args.out_dir, "--out_dir")  # before any sampling, not after
        cfg, model, weights = load_for_sampling(args.model_path, overrides, args.use_ema, args.ema_rate, ctx.device)
        opts = sample_options_from(args)
        plan = resolve_plan(cfg, opts)
        steps = plan.describe()
        if ctx.is_main:
            print(f"sampling {opts.num_samples or 'one per test video'} x {opts.samples_per_video} videos ({opts.task}) "
                  f"with {weights} from {args.model_path} on {ctx.world_size} rank(s); sampler {steps}", flush=True)
            if context_note(cfg, plan):
                print(context_note(cfg, plan), flush=True)
        start = time.perf_counter()
        mine = generate(model, plan, ctx, progress=ctx.is_main)
        skipped = plan.skipped
        elapsed = time.perf_counter() - start
    except (ValueError, FileNotFoundError) as e:
        distributed.cleanup(ctx)
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    num_items = plan.num_items
    result = gather_samples(ctx, mine, num_items)
    if ctx.is_main:
        samples, gt, masks = result
        out_dir = new_output_dir(args.out_dir, opts.task)
        for name, reason in skipped:
            print(f"skipped test video {name}: {reason}", flush=True)
        if skipped:
            print(f"--skip_bad_videos: {len(skipped)} test video(s) left out (listed in sample_options.json)")
        path = save_samples(out_dir, samples, gt, masks,
                            {**dataclasses.asdict(opts), "model_path": str(args.model_path), "weights": weights,
                             "skipped_test_videos": [{"path": n, "reason": r} for n, r in skipped]})
        print(f"wrote {path}", flush=True)
        print(f"sampled {num_items} videos in {elapsed:.1f} s ({elapsed * ctx.world_size / num_items:.2f} s per video "
              f"per rank; sampler {steps})", flush=True)
        if args.save_gifs:
            for p in save_previews(out_dir, samples, masks, args.save_gifs):
                print(f"wrote {p}", flush=True)
            if not mp4_available():
                print("no MP4 previews: pip install imageio imageio-ffmpeg to get them", flush=True)
    distributed.cleanup(ctx)


if __name__ == "__main__":
    main()
