"""
Export the embedded videos (moving digits or moving textures) as files that the folder loader reads.

    python datasets/make_synthetic.py --out_dir data/digits --num_videos 1000 [--format npz|gif]
    python datasets/make_synthetic.py --dataset textures --out_dir data/textures --num_videos 1000

Video i is the same as the one the training script generates on the fly for that seed.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from video_diffusion.data import MovingDigits, MovingTextures


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--out_dir", required=True, help="folder to write into (created)")
    p.add_argument("--num_videos", type=int, default=100, help="how many videos")
    p.add_argument("--image_size", type=int, default=32, help="frame height and width")
    p.add_argument("--seq_len", type=int, default=16, help="frames per video")
    p.add_argument("--channels", type=int, default=3, choices=(1, 3), help="3 = coloured digits, 1 = grayscale")
    p.add_argument("--format", default="npz", choices=("npz", "gif"),
                   help="file format: npz (exact uint8 frames) or gif (to look at); one per video, so that a "
                        "folder holds each video once (default: npz)")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--dataset", default="digits", choices=("digits", "textures"), help="which embedded generator")
    args = p.parse_args(argv)
    if args.num_videos < 1:
        p.error(f"--num_videos must be >= 1, got {args.num_videos}")
    kind = MovingTextures if args.dataset == "textures" else MovingDigits
    try:
        data = kind(args.image_size, args.seq_len, args.channels, num_videos=args.num_videos, seed=args.seed)
    except ValueError as e:
        p.error(str(e))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(args.num_videos), desc="videos"):
        video = data.frames(i)  # uint8 [T, H, W, C]
        if args.format == "npz":
            np.savez(out / f"{args.dataset}_{i:06d}.npz", video=video)
        else:
            frames = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in video]
            frames[0].save(out / f"{args.dataset}_{i:06d}.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    print(f"wrote {args.num_videos} videos to {out}")


if __name__ == "__main__":
    main()
