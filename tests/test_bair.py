"""BAIR conversion from TFRecords the test writes itself (framing and protobuf encoded by hand)."""

import struct
import subprocess
import sys
import tarfile

import crc32c
import numpy as np
import pytest

from conftest import REPO, script_env

SCRIPT = str(REPO / "datasets" / "prepare_bair.py")
T = 30


def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, payload):  # length-delimited field
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def feature_bytes(value):
    return field(1, field(1, value))  # Feature.bytes_list { value }


def feature_floats(values):
    return field(2, field(1, struct.pack(f"<{len(values)}f", *values)))  # Feature.float_list, packed


def example(features):
    entries = b"".join(field(1, field(1, k.encode()) + field(2, v)) for k, v in features.items())
    return field(1, entries)  # Example.features { feature: map entries }


def masked(data):
    c = crc32c.crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data):
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked(header)) + data + struct.pack("<I", masked(data))


def trajectory(seed):
    rng = np.random.default_rng(seed)
    return {"image_aux1": rng.integers(0, 256, (T, 64, 64, 3), dtype=np.uint8),
            "image_main": rng.integers(0, 256, (T, 64, 64, 3), dtype=np.uint8),
            "action": rng.standard_normal((T, 4)).astype(np.float32),
            "endeffector_pos": rng.standard_normal((T, 3)).astype(np.float32)}


def encode(traj):
    feats = {}
    for t in range(T):
        feats[f"{t}/image_aux1/encoded"] = feature_bytes(traj["image_aux1"][t].tobytes())
        feats[f"{t}/image_main/encoded"] = feature_bytes(traj["image_main"][t].tobytes())
        feats[f"{t}/action"] = feature_floats(traj["action"][t].tolist())
        feats[f"{t}/endeffector_pos"] = feature_floats(traj["endeffector_pos"][t].tolist())
    return example(feats)


@pytest.fixture()
def bair_dir(tmp_path):
    """softmotion30_44k/{train,test}: train has 2 files (natural order 2 < 10), test 1 file."""
    root = tmp_path / "softmotion30_44k"
    trajs = {}
    layout = {"train": ["traj_10_to_11.tfrecords", "traj_2_to_3.tfrecords"], "test": ["traj_0_to_1.tfrecords"]}
    seed = 0
    for split, names in layout.items():
        (root / split).mkdir(parents=True)
        for name in names:
            records = [trajectory(seed), trajectory(seed + 1)]
            seed += 2
            trajs[(split, name)] = records
            (root / split / name).write_bytes(b"".join(frame(encode(r)) for r in records))
    return root, trajs


def convert(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], env=script_env(), capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("camera", ["image_aux1", "image_main"])
def test_converted_arrays_equal_what_was_written(bair_dir, tmp_path, camera):
    root, trajs = bair_dir
    out = tmp_path / "out"
    proc = convert("--tfrecord_dir", str(root), "--out_dir", str(out), "--camera", camera)
    assert proc.returncode == 0, proc.stderr
    assert "train: 4 trajectories" in proc.stdout and "test: 2 trajectories" in proc.stdout
    # natural file order: traj_2_to_3 before traj_10_to_11, then record order
    expected = {"train": trajs[("train", "traj_2_to_3.tfrecords")] + trajs[("train", "traj_10_to_11.tfrecords")],
                "test": trajs[("test", "traj_0_to_1.tfrecords")]}
    for split, records in expected.items():
        files = sorted((out / split).glob("*.npz"))
        assert len(files) == len(records)
        for f, traj in zip(files, records):
            z = np.load(f)
            assert z["video"].dtype == np.uint8 and z["video"].shape == (T, 64, 64, 3)
            assert np.array_equal(z["video"], traj[camera])
            assert np.array_equal(z["action"], traj["action"]) and z["action"].dtype == np.float32
            assert np.array_equal(z["endeffector_pos"], traj["endeffector_pos"])


def test_flipped_byte_is_a_crc_error_naming_file_and_record(bair_dir, tmp_path):
    root, _ = bair_dir
    path = root / "test" / "traj_0_to_1.tfrecords"
    data = bytearray(path.read_bytes())
    second = len(data) // 2 + 1000  # inside the second record's data
    data[second] ^= 0xFF
    path.write_bytes(bytes(data))
    proc = convert("--tfrecord_dir", str(root), "--out_dir", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert f"{path}: record 1: CRC mismatch" in proc.stderr


def test_truncated_file_is_an_error(bair_dir, tmp_path):
    root, _ = bair_dir
    path = root / "test" / "traj_0_to_1.tfrecords"
    path.write_bytes(path.read_bytes()[:-10])
    proc = convert("--tfrecord_dir", str(root), "--out_dir", str(tmp_path / "out"))
    assert proc.returncode != 0 and f"{path}: record 1: truncated" in proc.stderr


def test_converted_folder_feeds_the_loader(bair_dir, tmp_path):
    from video_diffusion.data import VideoFolder

    root, trajs = bair_dir
    assert convert("--tfrecord_dir", str(root), "--out_dir", str(tmp_path / "out")).returncode == 0
    data = VideoFolder(tmp_path / "out" / "test", image_size=64, seq_len=16, windows="first")
    assert len(data) == 2
    first = trajs[("test", "traj_0_to_1.tfrecords")][0]["image_aux1"][:16]
    assert np.array_equal(((data[0]["video"].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy(), first)


def test_download_fetches_and_unpacks_only_when_asked(bair_dir, tmp_path):
    root, _ = bair_dir
    archive = tmp_path / "bair.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="softmotion30_44k")
    dest = tmp_path / "raw"
    proc = convert("--download", "--url", archive.as_uri(), "--tfrecord_dir", str(dest), "--out_dir", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert (dest / "softmotion30_44k" / "train" / "traj_2_to_3.tfrecords").is_file()
    assert len(list((tmp_path / "o" / "train").glob("*.npz"))) == 4


@pytest.mark.slow
def test_usage_errors(tmp_path):
    proc = convert("--out_dir", str(tmp_path))
    assert proc.returncode != 0 and "--tfrecord_dir" in proc.stderr
    proc = convert("--tfrecord_dir", str(tmp_path), "--out_dir", str(tmp_path / "o"))
    assert proc.returncode != 0 and "no *.tfrecords" in proc.stderr
    proc = convert("--use_tfds", "--out_dir", str(tmp_path / "o"))
    assert proc.returncode != 0 and "tensorflow" in proc.stderr


class ArchiveServer:
    """A local HTTP server for one archive; ``truncate`` sends half of it under the full Content-Length."""

    def __init__(self, data: bytes):
        import http.server
        import threading

        server_self = self
        self.data, self.truncate, self.requests = data, True, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server_self.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(server_self.data)))
                self.end_headers()
                body = server_self.data[: len(server_self.data) // 2] if server_self.truncate else server_self.data
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/bair.tar"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.mark.slow
def test_a_truncated_download_is_detected_and_a_rerun_fetches_again(bair_dir, tmp_path):
    root, _ = bair_dir
    archive = tmp_path / "bair.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="softmotion30_44k")
    server = ArchiveServer(archive.read_bytes())
    dest = tmp_path / "raw"
    try:
        args = ("--download", "--url", server.url, "--tfrecord_dir", str(dest), "--out_dir", str(tmp_path / "o"))
        cut = convert(*args)
        assert cut.returncode == 2 and "incomplete" in cut.stderr and "Traceback" not in cut.stderr
        assert sorted(p.name for p in dest.iterdir()) == []  # nothing renamed into place, no partial file
        server.truncate = False
        again = convert(*args)
        assert again.returncode == 0, again.stderr
        assert server.requests == 2 and (dest / "bair.tar").is_file()
        assert len(list((tmp_path / "o" / "train").glob("*.npz"))) == 4
    finally:
        server.close()


def test_an_archive_member_outside_the_destination_is_refused(tmp_path):
    import io

    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    dest = tmp_path / "raw"
    proc = convert("--download", "--url", archive.as_uri(), "--tfrecord_dir", str(dest), "--out_dir", str(tmp_path / "o"))
    assert proc.returncode == 2 and "points outside the destination" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "escaped.txt").exists()


def test_an_unreadable_archive_is_a_one_line_error(tmp_path):
    dest = tmp_path / "raw"
    src = tmp_path / "bad.tar"
    src.write_bytes(b"this is not a tar archive" * 100)
    proc = convert("--download", "--url", src.as_uri(), "--tfrecord_dir", str(dest), "--out_dir", str(tmp_path / "o"))
    assert proc.returncode == 2 and "could not unpack" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(dest.glob(".*unpacking"))
