"""
What a perfect model would score on the embedded moving digits, for comparison with
scripts/evaluate.py's figures on the same held-out videos.

    python scripts/digits_ceiling.py --num_cond_frames 2            # 2 -> 6 on the tiny preset's videos
    python scripts/digits_ceiling.py --task infill --cond_frames 0,7

The generator moves digits by whole pixels, so two given frames determine a digit's motion
except where it may have bounced between them or another digit hides it; one frame leaves the
velocity open. This draws samples from the exact posterior (video_diffusion/evaluation/perfect.py:
the generator's prior, kept where it reproduces the given frames) and scores them like the harness does:
PSNR and SSIM over the generated frames, mean and best of --samples_per_video, beside the
copy-last-frame and black-frame baselines. No model can beat the mean on average.

It also scores the object tracker (video_diffusion/evaluation/tracker.py), a model-free
predictor that knows the digits are objects moving at constant velocity and reflecting off
the borders: what that knowledge alone is worth, between the baselines and the ceiling.

And it scores the true frames with faint Gaussian noise added (--noise_levels, in grey levels of
255, rounded and clipped like a sample): on frames that are mostly black, SSIM falls fast with
noise that PSNR hardly sees (sigma 8: PSNR about 33 dB, SSIM near the black frame's), so a
model's SSIM there says as much about how clean its background is as about its digits.
"""

import argparse

import numpy as np

from video_diffusion.files import write_json
from video_diffusion.flags import parse_float_list
from video_diffusion.config import PRESETS, Config, apply_overrides
from video_diffusion.evaluation.perfect import perfect_model_scores
from video_diffusion.evaluation.tracker import track
from video_diffusion.evaluation.quality import copy_last_given, set_scores, video_scores
from video_diffusion.sampling.plan import task_mask, test_dataset


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="whose frame size, length and colour")
    p.add_argument("--task", default="prediction", choices=("prediction", "infill"))
    p.add_argument("--num_cond_frames", type=int, default=2, help="prediction: the first c frames are given")
    p.add_argument("--cond_frames", default="", help="infill: the given frame indices, e.g. '0,7'")
    p.add_argument("--num_videos", type=int, default=32, help="held-out videos (the harness's, in its order)")
    p.add_argument("--samples_per_video", type=int, default=4, help="posterior samples per video")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
    p.add_argument("--noise_levels", default="4,8", help="also score the true frames with Gaussian noise of these "
                   "standard deviations in grey levels ('' for none)")
    p.add_argument("--out", default="", help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.num_videos < 1 or args.samples_per_video < 1:
        p.error("--num_videos and --samples_per_video must be >= 1")
    try:
        levels = parse_float_list(args.noise_levels, "--noise_levels") if args.noise_levels else []
    except ValueError as e:
        p.error(str(e))
    if any(level <= 0 for level in levels):
        p.error(f"--noise_levels must be > 0 grey levels, got {args.noise_levels!r}")
    cfg = apply_overrides(Config(), PRESETS[args.preset])
    if cfg.train.data_dir:
        p.error(f"--preset {args.preset} trains on a folder; the ceiling is for the embedded digits")
    try:
        mask = task_mask(args.task, 1, cfg.model.seq_len, args.num_cond_frames, args.cond_frames)[0].numpy()
    except ValueError as e:
        p.error(str(e))
    given = np.flatnonzero(mask)
    data = test_dataset(cfg, cfg.model.seq_len)
    perfect = perfect_model_scores(data, mask, args.num_videos, args.samples_per_video, seed=args.seed)
    copy, black, tracked = [], [], []
    noisy = {level: [] for level in levels}
    rng = np.random.default_rng(args.seed)
    for v in range(args.num_videos):
        gt = data.frames(v)
        copy.append(video_scores(copy_last_given(gt, mask), gt, mask))
        black.append(video_scores(np.zeros_like(gt), gt, mask))
        tracked.append(video_scores(track(gt, given), gt, mask))
        for level in levels:
            frames = np.clip(np.round(gt + rng.normal(0.0, level, gt.shape)), 0, 255).astype(gt.dtype)
            noisy[level].append(video_scores(frames, gt, mask))
    base = {"copy_last_given": set_scores(copy), "black": set_scores(black), "object_tracker": set_scores(tracked)}
    psnr_mean, psnr_best, ssim_mean, ssim_best = (perfect[k] for k in ("psnr_mean", "psnr_best", "ssim_mean",
                                                                        "ssim_best"))
    k = args.samples_per_video
    result = {"preset": args.preset, "task": args.task, "given_frames": given.tolist(),
              "num_videos": args.num_videos, "samples_per_video": k,
              "psnr_definition": "from the mean squared error over all generated frames of the set",
              "perfect_model": perfect, **base,
              "true_frames_with_noise": {f"{level:g}": set_scores(noisy[level]) for level in levels}}
    print(f"{args.task}, given frames {given.tolist()} of {cfg.model.seq_len}, {args.num_videos} held-out videos "
          f"({args.preset} preset's data)")
    print(f"{'':28s} {'PSNR (dB)':>10s} {'SSIM':>7s}   (PSNR from the MSE over all generated frames)")
    print(f"{'perfect model':28s} {psnr_mean:10.2f} {ssim_mean:7.3f}")
    if k > 1:
        print(f"{'perfect model, best of ' + str(k):28s} {psnr_best:10.2f} {ssim_best:7.3f}")
    for key, label in (("object_tracker", "object tracker (no model)"), ("copy_last_given", "copy last given frame"),
                       ("black", "black frame")):
        print(f"{label:28s} {base[key]['psnr']:10.2f} {base[key]['ssim']:7.3f}")
    for level, scores in result["true_frames_with_noise"].items():
        label = f"true frames + noise {level}/255"
        print(f"{label:28s} {scores['psnr']:10.2f} {scores['ssim']:7.3f}")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
