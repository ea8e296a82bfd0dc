"""
Fréchet video distance between a sample file and reference videos, equal to the reference
TensorFlow implementation (I3D from TF-Hub, TF1 bilinear resize, float64 statistics).

    python scripts/video_fvd.py --samples samples/samples_256x16x64x64x3.npz --reference real.npz
    python scripts/video_fvd.py --samples S.npz --data_dir data/bair/test --num_frames 16 --ref_stats bair16.npz

Videos are uint8 [N, T, H, W, 3] under ``arr_0`` (as video_sample.py writes). Reference
statistics are read from --ref_stats when that file exists, else computed and written
there. The statistics record what they were computed from (frames, frame size, number of
videos, and a fingerprint of the source): a mismatch with the samples, or with a
--reference / --data_dir given beside them, is an error, never a silently wrong number.
The last line printed is ``FVD: <value>``.
"""

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from video_diffusion.files import write_npz
from video_diffusion.data import VideoFolder
from video_diffusion.evaluation.fvd import (check_videos, feature_stats, frechet_distance, i3d_features,
                                            load_sample_file, load_stats, save_stats)
from video_diffusion.evaluation.weights import add_i3d_flags, load_i3d


def folder_dataset(data_dir, num_frames, image_size) -> VideoFolder:
    """The first window of ``num_frames`` frames of every video in the folder (no file skipped)."""
    return VideoFolder(data_dir, image_size, num_frames, channels=3, windows="first")


def folder_videos(data: VideoFolder) -> np.ndarray:
    """uint8 [N, T, H, W, 3]."""
    return np.stack([((data[i]["video"].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()
                     for i in range(len(data))])


def file_fingerprint(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"file sha256 {h.hexdigest()[:16]}"


def check_stats_match(meta: dict, path, samples: np.ndarray, source: str = None) -> None:
    """The cached statistics must describe clips like the samples, from the named source if one is given."""
    want = {"num_frames": samples.shape[1], "height": samples.shape[2], "width": samples.shape[3]}
    missing = [k for k in (*want, "source") if k not in meta]
    if missing:
        raise ValueError(f"--ref_stats {str(path)!r} does not record {', '.join(missing)} (written by an older "
                         "version): delete it to recompute")
    for key, value in want.items():
        if int(meta[key]) != value:
            raise ValueError(f"--ref_stats {str(path)!r} holds {key} {int(meta[key])}, the samples have {value} "
                             "(use --num_frames, or statistics of matching clips)")
    if source is not None and str(meta["source"]) != source:
        raise ValueError(f"--ref_stats {str(path)!r} was computed from {meta['source']}, not from the reference "
                         f"given now ({source}): delete it or name another file")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--samples", required=True, help="npz with arr_0 uint8 [N, T, H, W, 3]")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--reference", help="npz with arr_0 uint8 [N, T, H, W, 3] real videos")
    ref.add_argument("--data_dir", help="folder of real videos (first window of each)")
    p.add_argument("--ref_stats", help="reference statistics cache (.npz): read if it exists, else written")
    p.add_argument("--num_frames", type=int, default=0, help="frames per video to use (0 = all)")
    p.add_argument("--batch_size", type=int, default=16, help="clips per I3D forward pass")
    add_i3d_flags(p)
    p.add_argument("--features_out", help="write the per-video features here (keys samples, reference)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    try:
        if args.ref_stats and not args.ref_stats.endswith(".npz"):
            raise ValueError(f"--ref_stats must name an .npz file, got {args.ref_stats!r}")
        if args.num_frames < 0:
            raise ValueError(f"--num_frames must be >= 0 (0 = all), got {args.num_frames}")
        if not (args.reference or args.data_dir or (args.ref_stats and Path(args.ref_stats).is_file())):
            raise ValueError("give --reference, --data_dir, or an existing --ref_stats file")
        samples = load_sample_file(args.samples, "--samples")
        if args.num_frames > samples.shape[1]:
            raise ValueError(f"--num_frames {args.num_frames}: the samples have only {samples.shape[1]} frames")
        samples = samples[:, :args.num_frames or None]
        cached = bool(args.ref_stats and Path(args.ref_stats).is_file())
        real, source, folder = None, None, None
        # name the reference before any network runs (a fingerprint, to check a cache against)
        if args.reference:
            source = f"--reference {Path(args.reference).resolve()} ({file_fingerprint(args.reference)})" \
                if Path(args.reference).is_file() else None
        elif args.data_dir:
            folder = folder_dataset(args.data_dir, samples.shape[1], samples.shape[2])
            source = f"--data_dir {Path(args.data_dir).resolve()} ({folder.fingerprint()['files_sha256']})"
        if cached:
            mu_r, sigma_r, meta = load_stats(args.ref_stats)
            check_stats_match(meta, args.ref_stats, samples, source)
        else:  # read and check the reference
            if args.reference:
                real = load_sample_file(args.reference, "--reference")
                if args.num_frames and real.shape[1] < args.num_frames:
                    raise ValueError(f"--num_frames {args.num_frames}: the reference has only {real.shape[1]} frames")
                real = real[:, :args.num_frames or None]
            else:
                real = check_videos(folder_videos(folder), f"--data_dir {args.data_dir}")
            if real.shape[1] != samples.shape[1]:
                raise ValueError(f"frame counts differ: samples {samples.shape[1]}, reference {real.shape[1]} "
                                 "(--num_frames N compares the first N frames of both)")
            if real.shape[2:4] != samples.shape[2:4]:
                raise ValueError(f"frame sizes differ: samples {samples.shape[2]}x{samples.shape[3]}, "
                                 f"reference {real.shape[2]}x{real.shape[3]}")
        model = load_i3d(args.i3d_weights, device, args.i3d_torchscript)
        progress = sys.stderr.isatty()
        sample_features = i3d_features(model, samples, args.batch_size, device, progress)
        ref_features = None
        if cached:
            print(f"reference statistics from {args.ref_stats} ({int(meta['num_videos'])} videos of "
                  f"{int(meta['num_frames'])} frames, {meta['source']})")
        else:
            ref_features = i3d_features(model, real, args.batch_size, device, progress)
            mu_r, sigma_r = feature_stats(ref_features)
            if args.ref_stats:
                save_stats(args.ref_stats, ref_features, num_frames=real.shape[1], height=real.shape[2],
                           width=real.shape[3], source=source)
                print(f"wrote reference statistics {args.ref_stats}")
        if args.features_out:
            write_npz(args.features_out, samples=sample_features,
                      **({"reference": ref_features} if ref_features is not None else {}))
        fvd = frechet_distance(*feature_stats(sample_features), mu_r, sigma_r)
    except (ValueError, FileNotFoundError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(f"{len(samples)} sample videos of {samples.shape[1]} frames")
    print(f"FVD: {fvd:.4f}")


if __name__ == "__main__":
    main()
