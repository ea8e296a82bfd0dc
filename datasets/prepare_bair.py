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
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from video_diffusion.data.tfrecord import CorruptRecord, parse_example, read_records, tfrecord_files

BAIR_URL = "http://rail.eecs.berkeley.edu/datasets/bair_robot_pushing_dataset_v0.tar"
# (bytes, sha256) of the archive, as tensorflow-datasets records them for this URL
KNOWN_ARCHIVES = {BAIR_URL: (32274964480, "c6f8d164ab2be07174ef597e3e070d7466f3142caddc467b6af119b9458cd9cd")}
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


class DownloadError(RuntimeError):
    """The archive could not be fetched or unpacked (nothing is left under its final name)."""


def fetch(url: str, archive: Path) -> Path:
    """
    Fetch ``url`` to ``archive`` through ``archive.part``; the file is renamed into place only
    when its length matches the server's Content-Length and, for a known URL, the expected size
    and SHA-256. Anything else deletes the partial file, so a rerun fetches again.
    """
    part = archive.with_name(archive.name + ".part")
    expected_size, expected_sha = KNOWN_ARCHIVES.get(url, (None, None))
    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url) as response, open(part, "wb") as f:
            announced = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=announced or expected_size, unit="B", unit_scale=True, desc="download") as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        for what, size in (("the server announced", announced), ("the archive has", expected_size)):
            if size is not None and received != size:
                raise DownloadError(f"download of {url} incomplete: received {received} bytes, {what} {size}")
        if expected_sha is not None and digest.hexdigest() != expected_sha:
            raise DownloadError(f"download of {url} is corrupt: SHA-256 {digest.hexdigest()}, expected {expected_sha}")
    except (OSError, urllib.error.URLError, http.client.HTTPException, DownloadError) as e:
        part.unlink(missing_ok=True)
        if isinstance(e, DownloadError):
            raise
        raise DownloadError(f"download of {url} failed after {received} bytes: {e}. Rerun to fetch again") from None
    part.replace(archive)
    return archive


def _safe_members(tar: tarfile.TarFile, where: str):
    """Every member, refusing anything that would land outside the destination or is not a plain
    file, folder or internal link (the guard of tarfile's "data" filter, on every Python version)."""
    for m in tar.getmembers():
        path = PurePosixPath(m.name)
        if path.is_absolute() or ".." in path.parts:
            raise DownloadError(f"{where}: member {m.name!r} points outside the destination; refusing to unpack")
        if m.issym() or m.islnk():
            target = PurePosixPath(m.linkname)
            if target.is_absolute() or ".." in (path.parent / target).parts:
                raise DownloadError(f"{where}: link {m.name!r} -> {m.linkname!r} leaves the destination")
        elif not (m.isfile() or m.isdir()):
            raise DownloadError(f"{where}: member {m.name!r} is a device or FIFO; refusing to unpack")
        yield m


def unpack(archive: Path, dest: Path) -> None:
    """Unpack into a staging folder, then move its entries into ``dest``: an error leaves no partial files."""
    staging = dest / f".{archive.name}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            members = list(_safe_members(tar, str(archive)))
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, members=members, **kwargs)
        for entry in staging.iterdir():
            target = dest / entry.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(entry, target)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DownloadError(f"could not unpack {archive}: {type(e).__name__}: {e}. Delete it and rerun with "
                            "--download to fetch it again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download(url: str, dest_dir) -> Path:
    """Fetch (unless already complete) and unpack the BAIR archive into ``dest_dir`` (only with --download)."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / Path(url).name
    expected_size = KNOWN_ARCHIVES.get(url, (None, None))[0]
    if archive.exists() and expected_size is not None and archive.stat().st_size != expected_size:
        raise DownloadError(f"{archive} has {archive.stat().st_size} bytes, the archive has {expected_size}: "
                            "delete it and rerun to fetch it again")
    if not archive.exists():
        fetch(url, archive)
    unpack(archive, dest)
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
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for split, n in sorted(counts.items()):
        print(f"{split}: {n} trajectories in {Path(args.out_dir) / split}")


if __name__ == "__main__":
    main()
