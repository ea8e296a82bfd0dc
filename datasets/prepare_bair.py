"""
Convert the BAIR robot pushing dataset to one .npz per trajectory, without TensorFlow.

    python datasets/prepare_bair.py --tfrecord_dir softmotion30_44k --out_dir data/bair
    python datasets/prepare_bair.py --download --tfrecord_dir data/bair_raw --out_dir data/bair   # ~30 GB
    python datasets/prepare_bair.py --use_tfds --out_dir data/bair     # from tensorflow-datasets

Each softmotion30_44k/{train,test}/traj_*_to_*.tfrecords record is a tf.train.Example with
``{t}/image_aux1/encoded`` and ``{t}/image_main/encoded`` (raw 64x64x3 uint8),
``{t}/action`` (4 floats) and ``{t}/endeffector_pos`` (3 floats), t = 0..29. The output
is OUT/<split>/traj_<n>.npz holding ``video`` uint8 [30, 64, 64, 3] (the chosen camera),
``action`` float32 [30, 4] and ``endeffector_pos`` float32 [30, 3]; n counts records in
file order (natural file-name order, then record order), so names sort like the records.
Train with ``--data_dir OUT/train``; evaluate on ``OUT/test`` (256 trajectories).
"""

import argparse
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
from tqdm import tqdm

from video_diffusion.data.tfrecord import CorruptRecord, parse_example, read_records, tfrecord_files

BAIR_URL = "http://rail.eecs.berkeley.edu/datasets/bair_robot_pushing_dataset_v0.tar"
CAMERAS = ("image_aux1", "image_main")
SIZE = 64


def trajectory_from_example(features, camera: str, where: str):
    """Arrays of one trajectory from its parsed features; a clear error if the layout is not BAIR's."""
    steps = sorted({int(k.split("/")[0]) for k in features if k.split("/")[0].isdigit()})
    if not steps or steps != list(range(len(steps))):
        raise ValueError(f"{where}: no per-timestep BAIR features ('0/{camera}/encoded', ...)")
    frames, actions, positions = [], [], []
    for t in steps:
        key = f"{t}/{camera}/encoded"
        if key not in features:
            raise ValueError(f"{where}: feature {key!r} missing")
        raw = features[key]
        if not isinstance(raw, bytes) or len(raw) != SIZE * SIZE * 3:
            raise ValueError(f"{where}: {key} holds {len(raw)} bytes, expected {SIZE}x{SIZE}x3 raw uint8")
        frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(SIZE, SIZE, 3))
        actions.append(features[f"{t}/action"])
        positions.append(features[f"{t}/endeffector_pos"])
    return {"video": np.stack(frames), "action": np.stack(actions).astype(np.float32),
            "endeffector_pos": np.stack(positions).astype(np.float32)}


def convert_tfrecords(tfrecord_dir, out_dir, camera: str = "image_aux1") -> dict:
    """Convert every ``*.tfrecords`` under ``tfrecord_dir``; returns {split: trajectories written}."""
    files = tfrecord_files(tfrecord_dir)
    if not files:
        raise FileNotFoundError(f"--tfrecord_dir {str(tfrecord_dir)!r} holds no *.tfrecords files")
    counts = {}
    for path in tqdm(files, desc="tfrecords"):
        split = path.parent.name
        target = Path(out_dir) / split
        target.mkdir(parents=True, exist_ok=True)
        for index, record in enumerate(read_records(path)):
            try:
                arrays = trajectory_from_example(parse_example(record), camera, f"{path}: record {index}")
            except Exception as e:
                if isinstance(e, ValueError) and str(path) in str(e):
                    raise
                raise CorruptRecord(path, index, f"not a tf.train.Example ({type(e).__name__}: {e})") from e
            n = counts.get(split, 0)
            np.savez(target / f"traj_{n:06d}.npz", **arrays)
            counts[split] = n + 1
    return counts


def download(url: str, dest_dir) -> Path:
    """Fetch and unpack the BAIR archive into ``dest_dir`` (only when --download is given)."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / Path(url).name
    if not archive.exists():
        tmp = archive.with_suffix(".part")
        with urllib.request.urlopen(url) as response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="download") as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        tmp.replace(archive)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def convert_tfds(out_dir, camera: str = "image_aux1") -> dict:
    """Read bair_robot_pushing_small through tensorflow-datasets (for users who have it prepared)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise RuntimeError("--use_tfds needs tensorflow and tensorflow-datasets installed") from e
    counts = {}
    for split in ("train", "test"):
        target = Path(out_dir) / split
        target.mkdir(parents=True, exist_ok=True)
        for n, ex in enumerate(tqdm(tfds.as_numpy(tfds.load("bair_robot_pushing_small", split=split)), desc=split)):
            np.savez(target / f"traj_{n:06d}.npz", video=ex[camera].astype(np.uint8),
                     action=ex["action"].astype(np.float32), endeffector_pos=ex["endeffector_pos"].astype(np.float32))
            counts[split] = n + 1
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--tfrecord_dir", help="folder holding {train,test}/*.tfrecords (searched recursively)")
    p.add_argument("--out_dir", required=True, help="output folder; trajectories go to OUT/<split>/")
    p.add_argument("--camera", default="image_aux1", choices=CAMERAS, help="which view (image_aux1 is the standard)")
    p.add_argument("--download", action="store_true", help=f"first fetch and unpack {BAIR_URL} (~30 GB) into --tfrecord_dir")
    p.add_argument("--url", default=BAIR_URL, help=argparse.SUPPRESS)
    p.add_argument("--use_tfds", action="store_true", help="read bair_robot_pushing_small via tensorflow-datasets")
    args = p.parse_args(argv)
    if not args.use_tfds and not args.tfrecord_dir:
        p.error("give --tfrecord_dir (with --download to fetch the archive there) or --use_tfds")
    try:
        if args.use_tfds:
            counts = convert_tfds(args.out_dir, args.camera)
        else:
            if args.download:
                download(args.url, args.tfrecord_dir)
            counts = convert_tfrecords(args.tfrecord_dir, args.out_dir, args.camera)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for split, n in sorted(counts.items()):
        print(f"{split}: {n} trajectories in {Path(args.out_dir) / split}")


if __name__ == "__main__":
    main()
