"""
Sample videos from a checkpoint: prediction, infilling or unconditional generation.

    python scripts/video_sample.py --model_path runs/tiny/ckpt_0000200.pt --task prediction --num_cond_frames 2
    python scripts/video_sample.py --model_path CKPT --task infill --cond_frames 0,7 --sampler ddim --timestep_respacing ddim50
    python scripts/video_sample.py --model_path CKPT --task generation --num_samples 16 --save_gifs 4
    mpiexec -n 4 python scripts/video_sample.py --model_path CKPT ...   # same file as on one process

The model is rebuilt from the configuration stored in the checkpoint; model and diffusion
flags given here override it (e.g. --timestep_respacing ddim50).
"""

import argparse
import sys
import time

from video_diffusion import dist_util
from video_diffusion.config import add_config_flags, given_fields, str2bool
from video_diffusion.sample_util import (SampleOptions, TASKS, gather_samples, generate, load_for_sampling,
                                        mp4_available, sample_options_from, save_previews, save_samples)
from video_diffusion.sampling import CONDITIONINGS, SAMPLERS


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = SampleOptions()
    p.add_argument("--model_path", required=True, help="checkpoint written by video_train.py")
    p.add_argument("--out_dir", default="samples", help="where the sample file and previews go (default: samples)")
    p.add_argument("--use_ema", type=str2bool, nargs="?", const=True, default=None,
                   help="sample with EMA weights (default: yes when the checkpoint has them)")
    p.add_argument("--ema_rate", default=None, help="which stored EMA rate (default: the largest)")
    p.add_argument("--task", default=d.task, choices=TASKS, help="what the given frames are (default: prediction)")
    p.add_argument("--num_cond_frames", type=int, default=d.num_cond_frames, help="prediction: first c frames given")
    p.add_argument("--cond_frames", default=d.cond_frames, help="infill: given frame indices, e.g. '0,5,10'")
    p.add_argument("--num_samples", type=int, default=d.num_samples,
                   help="videos to generate; 0 = one per test video (every video exactly once across ranks)")
    p.add_argument("--batch_size", type=int, default=d.batch_size, help="videos per forward pass per rank")
    p.add_argument("--seed", type=int, default=d.seed, help="video i uses the seed (seed, i)")
    p.add_argument("--sampler", default=d.sampler, choices=SAMPLERS, help="ancestral DDPM or DDIM")
    p.add_argument("--eta", type=float, default=d.eta, help="DDIM noise scale (0 = deterministic)")
    p.add_argument("--conditioning", default=d.conditioning, choices=("auto",) + CONDITIONINGS,
                   help="how given frames condition: 'mask' (trained with the frame mask), 'replacement' "
                        "(RaMViD's baseline for unconditional models); auto picks from the training config")
    p.add_argument("--resample_steps", type=int, default=d.resample_steps,
                   help="replacement: repeat each step R times with re-noising (1 = plain replacement)")
    p.add_argument("--guidance_scale", type=float, default=d.guidance_scale,
                   help="frame guidance w: uncond + w (cond - uncond); 1 = none")
    p.add_argument("--num_frames", type=int, default=d.num_frames,
                   help="total frames L; beyond seq_len the video is rolled out window by window (0 = seq_len)")
    p.add_argument("--context_frames", type=int, default=d.context_frames,
                   help="rollout: frames each new window is conditioned on (0 = seq_len // 2)")
    p.add_argument("--data_dir", default=d.data_dir, help="videos giving the context frames (default: embedded data)")
    p.add_argument("--deterministic", default=d.deterministic, choices=("first", "all"),
                   help="test windows from --data_dir: the first of each video, or every non-overlapping one")
    p.add_argument("--save_gifs", type=int, default=0, help="write the first k videos as GIF and PNG strip")
    add_config_flags(p, groups=("model", "diffusion"), with_preset=False)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = given_fields(args, groups=("model", "diffusion"))
    ctx = dist_util.setup_dist()
    try:
        cfg, model, weights = load_for_sampling(args.model_path, overrides, args.use_ema, args.ema_rate, ctx.device)
        opts = sample_options_from(args)
        if ctx.is_main:
            print(f"sampling {opts.num_samples or 'one per test video'} videos ({opts.task}) with {weights} from {args.model_path} "
                  f"on {ctx.world_size} rank(s)", flush=True)
        start = time.perf_counter()
        mine, num_samples = generate(cfg, model, opts, ctx, progress=ctx.is_main and sys.stderr.isatty())
        elapsed = time.perf_counter() - start
    except (ValueError, FileNotFoundError) as e:
        dist_util.cleanup(ctx)
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    result = gather_samples(ctx, mine, num_samples)
    if ctx.is_main:
        samples, gt, masks = result
        path = save_samples(args.out_dir, samples, gt, masks)
        print(f"wrote {path} ({elapsed:.1f} s on rank 0, {elapsed * ctx.world_size / num_samples:.2f} s per video)",
              flush=True)
        if args.save_gifs:
            for p in save_previews(args.out_dir, samples, masks, args.save_gifs):
                print(f"wrote {p}", flush=True)
            if not mp4_available():
                print("no MP4 previews: pip install imageio imageio-ffmpeg to get them", flush=True)
    dist_util.cleanup(ctx)


if __name__ == "__main__":
    main()
