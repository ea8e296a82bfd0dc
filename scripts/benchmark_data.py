"""
Folder-loader throughput: videos per second through the training DataLoader.

    python scripts/benchmark_data.py                       # 64x64, 30-frame npz and mp4, 0 and 2 workers
    python scripts/benchmark_data.py --num_videos 200 --workers 0,2,4 --json data_bench.json

Writes the test videos into a temporary folder (random content: the worst case for the
mp4 codec), then times --batches batches of --batch_size after one warm-up batch.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from video_diffusion.flags import parse_int_list
from video_diffusion.data import VideoFolder, train_loader


def write_videos(root: Path, fmt: str, n: int, frames: int, size: int):
    rng = np.random.default_rng(0)
    for i in range(n):
        video = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
        if fmt == "npz":
            np.savez(root / f"v{i:05d}.npz", video=video)
            continue
        with av.open(str(root / f"v{i:05d}.mp4"), "w") as c:
            s = c.add_stream("libx264", rate=10)
            s.width = s.height = size
            s.pix_fmt = "yuv420p"
            for f in video:
                for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(packet)
            for packet in s.encode():
                c.mux(packet)


def measure(root, image_size, seq_len, batch_size, workers, batches):
    data = VideoFolder(root, image_size, seq_len)
    it = train_loader(data, batch_size, 0, 1, seed=0, start_step=0, num_workers=workers)
    next(it)  # warm-up: worker start-up, first reads
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--formats", default="npz,mp4", help="comma list of npz, mp4")
    p.add_argument("--workers", default="0,2", help="comma list of DataLoader worker counts")
    p.add_argument("--num_videos", type=int, default=64)
    p.add_argument("--frames", type=int, default=30, help="frames per source video")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--seq_len", type=int, default=20, help="frames per training window")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats.split(","):
            root = Path(tmp) / fmt
            root.mkdir()
            write_videos(root, fmt, args.num_videos, args.frames, args.image_size)
            for w in parse_int_list(args.workers, "--workers"):
                vps = measure(root, args.image_size, args.seq_len, args.batch_size, w, args.batches)
                results.append({"format": fmt, "workers": w, "videos_per_s": vps})
                print(f"{fmt:4s} {args.image_size}x{args.image_size} {args.frames} frames, window {args.seq_len}, "
                      f"{w} workers: {vps:8.1f} videos/s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
