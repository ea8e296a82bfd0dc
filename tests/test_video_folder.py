"""The folder loader: every format round-trips, bad files get named errors or counted skips."""


import av
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from video_diffusion.data import BadVideo, VideoFolder, eval_shard
from video_diffusion.data.video_io import probe, read_frames, resize_frame


def frames(t=6, h=16, w=16, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, c), dtype=np.uint8)


def smooth_frames(t=6, h=32, w=32):
    # smooth content survives lossy codecs with small error
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(x * 8 + f * 10) % 256, (y * 8) % 256, np.full_like(x, 128)], -1)
                     for f in range(t)]).astype(np.uint8)


def write_gif(path, video):
    ims = [Image.fromarray(f) for f in video]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=100, loop=0)


def write_mp4(path, video, fps=10):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = video.shape[2], video.shape[1], "yuv444p"
        s.options = {"crf": "0"}
        for f in video:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def test_npz_npy_roundtrip_exactly(tmp_path):
    v = frames()
    np.savez(tmp_path / "a.npz", video=v)
    np.savez(tmp_path / "b.npz", v)  # arr_0
    np.save(tmp_path / "c.npy", v)
    for name in ("a.npz", "b.npz", "c.npy"):
        assert probe(tmp_path / name) == (6, 3)
        assert np.array_equal(read_frames(tmp_path / name), v)
        assert np.array_equal(read_frames(tmp_path / name, start=1, count=2, stride=2), v[[1, 3]])


def test_gif_roundtrip_exactly(tmp_path):
    # a GIF frame holds at most 256 colours: use a palette-friendly video
    v = (frames(c=1) // 64 * 64).repeat(3, axis=-1)
    write_gif(tmp_path / "a.gif", v)
    assert probe(tmp_path / "a.gif") == (6, 3)
    assert np.array_equal(read_frames(tmp_path / "a.gif"), v)


def test_frame_folder_roundtrip_exactly_in_numeric_order(tmp_path):
    v = frames(t=12)
    d = tmp_path / "clip"
    d.mkdir()
    for i, f in enumerate(v):
        Image.fromarray(f).save(d / f"frame_{i}.png")  # frame_10 must come after frame_9
    assert probe(d) == (12, 3)
    assert np.array_equal(read_frames(d), v)


def test_mp4_roundtrip_within_codec_tolerance(tmp_path):
    v = smooth_frames()
    write_mp4(tmp_path / "a.mp4", v)
    got = read_frames(tmp_path / "a.mp4")
    assert got.shape == v.shape
    assert np.abs(got.astype(int) - v.astype(int)).mean() < 3
    iio.imwrite(tmp_path / "b.mp4", v, fps=10)  # written by imageio too
    assert read_frames(tmp_path / "b.mp4").shape == v.shape


def test_resize_box_then_bicubic_and_centre_crop():
    frame = np.zeros((40, 80, 3), np.uint8)
    frame[:, 20:60] = 255  # a white central band
    out = resize_frame(frame, 16)
    assert out.shape == (16, 16, 3)
    assert out.min() > 200  # the centre crop sees only the band
    gray = resize_frame(np.full((8, 8, 1), 7, np.uint8), 8)
    assert gray.shape == (8, 8, 1) and (gray == 7).all()


def make_folder(tmp_path, n=5, t=10, size=24):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        np.savez(root / ("sub" if i % 2 else "") / f"{'cat' if i < 3 else 'dog'}_{i}.npz", video=frames(t, size, size, seed=i))
    return root


def test_folder_dataset_items(tmp_path):
    root = make_folder(tmp_path)
    data = VideoFolder(root, image_size=16, seq_len=4, class_cond=True)
    assert len(data) == 5 and data.classes == ["cat", "dog"]
    item = data[(2, 123)]
    assert item["video"].shape == (3, 4, 16, 16) and item["video"].min() >= -1 and item["video"].max() <= 1
    assert item["y"] in (0, 1)
    assert torch.equal(data[(2, 123)]["video"], item["video"])  # the seed decides the window
    first = VideoFolder(root, image_size=24, seq_len=4, windows="first")
    path = first.videos[0][0]
    expected = torch.from_numpy(np.load(path)["video"][:4]).permute(3, 0, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(first[0]["video"], expected)
    every = VideoFolder(root, image_size=24, seq_len=4, windows="all")
    assert len(every) == 5 * 2  # 10 frames hold two non-overlapping windows of 4
    strided = VideoFolder(root, image_size=24, seq_len=4, frame_stride=3, windows="first")
    torch.testing.assert_close(strided[0]["video"],
                               torch.from_numpy(np.load(path)["video"][0:10:3]).permute(3, 0, 1, 2).float() / 127.5 - 1)
    gray = VideoFolder(root, image_size=24, seq_len=4, channels=1, windows="first")
    assert gray[0]["video"].shape == (1, 4, 24, 24)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_evaluation_video_exactly_once_across_ranks(world_size):
    for n in (1, 7, 256):
        shards = [eval_shard(n, r, world_size) for r in range(world_size)]
        assert sorted(sum(shards, [])) == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


BAD_CASES = {
    "broken.mp4": (lambda p: p.write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage"), "cannot be decoded"),
    "short.gif": (lambda p: write_gif(p, frames(t=2)), "has 2 frames"),
    "rgba.npz": (lambda p: np.savez(p, video=frames(c=4)), "has 4 channels"),
    "float.npy": (lambda p: np.save(p, frames().astype(np.float32)), "expected uint8"),
    "nokey.npz": (lambda p: np.savez(p, frames=frames()), "no array named video or arr_0"),
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_file_is_a_named_error_or_a_counted_skip(tmp_path, name):
    root = make_folder(tmp_path, n=2)
    make, reason = BAD_CASES[name]
    make(root / name)
    with pytest.raises(BadVideo) as e:
        VideoFolder(root, image_size=16, seq_len=4)
    assert name in str(e.value) and reason in str(e.value) and "--skip_bad_videos" in str(e.value)
    data = VideoFolder(root, image_size=16, seq_len=4, skip_bad=True)
    assert len(data) == 2 and len(data.skipped) == 1 and data.skipped[0][0].endswith(name)


def test_grayscale_video_for_an_rgb_model_is_an_error(tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    np.savez(root / "g.npz", video=frames(c=1))
    with pytest.raises(BadVideo, match="grayscale"):
        VideoFolder(root, image_size=16, seq_len=4)
    assert VideoFolder(root, image_size=16, seq_len=4, channels=1)[(0, 1)]["video"].shape == (1, 4, 16, 16)


def test_empty_folder_and_folder_without_videos(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no videos"):
        VideoFolder(tmp_path, image_size=16, seq_len=4)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match="holds no videos"):
        VideoFolder(tmp_path, image_size=16, seq_len=4)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        VideoFolder(tmp_path / "missing", image_size=16, seq_len=4)


def test_short_gif_is_an_error_not_a_batching_crash(tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    write_gif(root / "a.gif", frames(t=8))
    write_gif(root / "b.gif", frames(t=3))
    with pytest.raises(BadVideo, match="b.gif: has 3 frames"):
        VideoFolder(root, image_size=16, seq_len=4)
