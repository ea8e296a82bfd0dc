"""
Fréchet video distance between a sample file and reference videos, equal to the reference
TensorFlow implementation (I3D from TF-Hub, TF1 bilinear resize, float64 statistics).

    python scripts/video_fvd.py --samples samples/samples_256x16x64x64x3.npz --reference real.npz
    python scripts/video_fvd.py --samples S.npz --data_dir data/bair/test --num_frames 16 --ref_stats bair16.npz

Videos are uint8 [N, T, H, W, 3] under ``arr_0`` (as video_sample.py writes). Reference
statistics are read from --ref_stats when that file exists, else computed and written
there. The last line printed is ``FVD: <value>``.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from video_diffusion.data import VideoFolder
from video_diffusion.evaluation.fvd import (check_videos, feature_stats, frechet_distance, i3d_features,
                                            load_sample_file, load_stats, save_stats)
from video_diffusion.evaluation.weights import add_i3d_flags, load_i3d


def folder_videos(data_dir, num_frames, image_size) -> np.ndarray:
    """The first ``num_frames`` frames of every video in the folder, uint8 [N, T, H, W, 3]."""
    data = VideoFolder(data_dir, image_size, num_frames, channels=3, windows="first")
    return np.stack([((data[i]["video"].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()
                     for i in range(len(data))])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--samples", required=True, help="npz with arr_0 uint8 [N, T, H, W, 3]")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--reference", help="npz with arr_0 uint8 [N, T, H, W, 3] real videos")
    ref.add_argument("--data_dir", help="folder of real videos (first window of each)")
    p.add_argument("--ref_stats", help="reference statistics cache: read if it exists, else written")
    p.add_argument("--num_frames", type=int, default=0, help="frames per video to use (0 = all)")
    p.add_argument("--batch_size", type=int, default=16, help="clips per I3D forward pass")
    add_i3d_flags(p)
    p.add_argument("--features_out", help="write the per-video features here (keys samples, reference)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    try:
        if not (args.reference or args.data_dir or (args.ref_stats and Path(args.ref_stats).is_file())):
            raise ValueError("give --reference, --data_dir, or an existing --ref_stats file")
        samples = load_sample_file(args.samples, "--samples", num_frames=args.num_frames or None)
        cached = bool(args.ref_stats and Path(args.ref_stats).is_file())
        real = None
        if not cached:  # read and check the reference before any network runs
            if args.reference:
                real = load_sample_file(args.reference, "--reference", num_frames=args.num_frames or None)
            else:
                real = check_videos(folder_videos(args.data_dir, args.num_frames or samples.shape[1],
                                                  samples.shape[2]), f"--data_dir {args.data_dir}")
            if real.shape[2:4] != samples.shape[2:4]:
                raise ValueError(f"frame sizes differ: samples {samples.shape[2]}x{samples.shape[3]}, "
                                 f"reference {real.shape[2]}x{real.shape[3]}")
        model = load_i3d(args.i3d_weights, device, args.i3d_torchscript)
        progress = sys.stderr.isatty()
        sample_features = i3d_features(model, samples, args.batch_size, device, progress)
        ref_features = None
        if cached:
            mu_r, sigma_r, meta = load_stats(args.ref_stats)
            print(f"reference statistics from {args.ref_stats} ({int(meta.get('num_videos', 0))} videos)")
        else:
            ref_features = i3d_features(model, real, args.batch_size, device, progress)
            mu_r, sigma_r = feature_stats(ref_features)
            if args.ref_stats:
                save_stats(args.ref_stats, ref_features)
                print(f"wrote reference statistics {args.ref_stats}")
        if args.features_out:
            np.savez(args.features_out, samples=sample_features,
                     **({"reference": ref_features} if ref_features is not None else {}))
        fvd = frechet_distance(*feature_stats(sample_features), mu_r, sigma_r)
    except (ValueError, FileNotFoundError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(f"{len(samples)} sample videos of {samples.shape[1]} frames")
    print(f"FVD: {fvd:.4f}")


if __name__ == "__main__":
    main()
