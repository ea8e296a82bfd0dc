"""FVD (Fréchet maths, TF1 resize, I3D, weights formats, the published black/white value), PSNR and SSIM."""

import json
import math
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from conftest import REPO, VENV_BIN, script_env
from conftest import MICRO_FLAGS
from video_diffusion.evaluation.fvd import feature_stats, frechet_distance, fvd_from_features, tf1_resize_bilinear
from video_diffusion.evaluation.i3d import INCEPTION, InceptionI3d
from video_diffusion.evaluation.metrics import PSNR_CAP, best_and_mean, mse, psnr_best_and_mean, psnr_of_mse, ssim
from video_diffusion.evaluation.weights import load_i3d, _units

FVD_SCRIPT = str(REPO / "scripts" / "video_fvd.py")


# ---------------------------------------------------------------- Fréchet maths
def test_diagonal_gaussians_match_the_closed_form():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_mean_shift_adds_its_squared_norm_and_symmetry_and_self_distance():
    rng = np.random.default_rng(0)
    f1, f2 = rng.standard_normal((200, 16)), rng.standard_normal((150, 16)) @ rng.standard_normal((16, 16))
    d = fvd_from_features(f1, f2)
    shift = rng.standard_normal(16)
    assert fvd_from_features(f1 + shift, f1) == pytest.approx((shift ** 2).sum(), abs=1e-9)
    assert fvd_from_features(f2, f1) == pytest.approx(d, rel=1e-9)
    assert abs(fvd_from_features(f1, f1)) < 1e-9


@pytest.mark.parametrize("n,dim", [(300, 20), (30, 64)])  # the second: fewer videos than dimensions
def test_agrees_with_scipy_sqrtm(n, dim):
    rng = np.random.default_rng(1)
    f1, f2 = rng.standard_normal((n, dim)), rng.standard_normal((n, dim)) * 2 + 0.5
    (m1, s1), (m2, s2) = feature_stats(f1), feature_stats(f2)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    reference = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(reference, rel=1e-6, abs=1e-6)
    assert np.allclose(s1, np.cov(f1.T, ddof=1))  # unbiased covariance


# ---------------------------------------------------------------- TF1 resize
def test_tf1_resize_matches_a_hand_computed_example():
    x = torch.tensor([[0.0, 10.0], [20.0, 30.0]])[..., None]  # [H=2, W=2, C=1]
    out = tf1_resize_bilinear(x, 4)[..., 0]
    # source = destination * in/out: rows and columns at 0, 0.5, 1, 1.5 (clamped to the last pixel)
    expected = torch.tensor([[0.0, 5, 10, 10], [10, 15, 20, 20], [20, 25, 30, 30], [20, 25, 30, 30]])
    torch.testing.assert_close(out, expected)
    row = torch.tensor([[0.0, 3.0, 6.0, 9.0]])[..., None]  # 4 -> 3: samples at 0, 4/3, 8/3
    torch.testing.assert_close(tf1_resize_bilinear(row.expand(4, 4, 1), 3)[0, :, 0],
                               torch.tensor([0.0, 4.0, 8.0]))
    # unlike torch's half-pixel bilinear
    torch_half = F.interpolate(x.permute(2, 0, 1)[None], size=4, mode="bilinear", align_corners=False)[0, 0]
    assert not torch.allclose(torch_half, expected)


# ---------------------------------------------------------------- I3D
def tf_same(size, k, s):
    out = -(-size // s)
    total = max(0, (out - 1) * s + k - size)
    return total // 2, total - total // 2


def reference_i3d(model, x):
    """An independent forward pass assembled from the public layer list, with explicit TF SAME padding."""
    def pad(x, k, s, value=0.0):
        p = []
        for dim in (4, 3, 2):
            p += tf_same(x.shape[dim], k[dim - 2], s[dim - 2])
        return F.pad(x, p, value=value)

    def unit(u, x, k=(1, 1, 1), s=(1, 1, 1)):
        y = F.conv3d(pad(x, k, s), u.conv.weight, stride=s)
        y = (y - u.bn.running_mean[:, None, None, None]) / torch.sqrt(u.bn.running_var[:, None, None, None] + 1e-3)
        return torch.relu(y + u.bn_bias[:, None, None, None])

    def pool(x, k, s):
        return F.max_pool3d(pad(x, k, s, -math.inf), k, s)

    layers = [("unit", model.Conv3d_1a_7x7, (7, 7, 7), (2, 2, 2)), ("pool", None, (1, 3, 3), (1, 2, 2)),
              ("unit", model.Conv3d_2b_1x1, (1, 1, 1), (1, 1, 1)), ("unit", model.Conv3d_2c_3x3, (3, 3, 3), (1, 1, 1)),
              ("pool", None, (1, 3, 3), (1, 2, 2))]
    for kind, mod, k, s in layers:
        x = unit(mod, x, k, s) if kind == "unit" else pool(x, k, s)
    for name in INCEPTION:
        if name == "Mixed_4b":
            x = pool(x, (3, 3, 3), (2, 2, 2))
        if name == "Mixed_5b":
            x = pool(x, (2, 2, 2), (2, 2, 2))
        m = model.mixed[name]
        x = torch.cat([unit(m.branch_0, x), unit(m.branch_1b, unit(m.branch_1a, x), (3, 3, 3)),
                       unit(m.branch_2b, unit(m.branch_2a, x), (3, 3, 3)),
                       unit(m.branch_3, pool(x, (3, 3, 3), (1, 1, 1)))], dim=1)
    x = F.avg_pool3d(x, (2, 7, 7), 1)
    return F.conv3d(x, model.logits.weight, model.logits.bias).mean(dim=(2, 3, 4))


def random_i3d(seed=0):
    torch.manual_seed(seed)
    model = InceptionI3d()
    with torch.no_grad():
        for unit, _, _ in _units(model):
            unit.bn.running_mean.normal_(0, 0.1)
            unit.bn.running_var.uniform_(0.5, 2.0)
            unit.bn_bias.normal_(0, 0.1)
    return model.eval()


def test_i3d_with_random_weights_equals_the_independent_reference():
    model = random_i3d()
    x = torch.rand(1, 3, 10, 224, 224) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_i3d(model, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("t,h,w", [(11, 201, 213), (13, 224, 230)])
def test_i3d_shapes_for_odd_input_sizes(t, h, w):
    with torch.no_grad():
        assert random_i3d()(torch.zeros(2, 3, t, h, w)).shape == (2, 400)


def test_i3d_needs_ten_frames():
    with pytest.raises(ValueError, match="at least 10 frames"):
        random_i3d()(torch.zeros(1, 3, 9, 224, 224))


# ---------------------------------------------------------------- weight formats
def flax_state(model):
    params, stats = {}, {}
    for unit, scope, _ in _units(model):
        node = params
        for part in scope.split("/"):
            node = node.setdefault(part, {})
        node["Conv_0"] = {"kernel": unit.conv.weight.detach().permute(2, 3, 4, 1, 0).numpy()}
        node["BatchNorm_0"] = {"bias": unit.bn_bias.detach().numpy()}
        snode = stats
        for part in scope.split("/"):
            snode = snode.setdefault(part, {})
        snode["BatchNorm_0"] = {"mean": unit.bn.running_mean.numpy().reshape(1, 1, 1, 1, -1),
                                "var": unit.bn.running_var.numpy().reshape(1, 1, 1, 1, -1)}
    params["Logits"] = {"Conv3d_0c_1x1": {"Conv_0": {"kernel": model.logits.weight.detach().permute(2, 3, 4, 1, 0).numpy(),
                                                     "bias": model.logits.bias.detach().numpy()}}}
    return {"params": params, "batch_stats": stats}


def pytorch_i3d_state_dict(model):
    sd = {}
    for unit, _, name in _units(model):
        sd[f"{name}.conv3d.weight"] = unit.conv.weight.detach().clone()
        sd[f"{name}.bn.weight"] = torch.ones_like(unit.bn_bias)
        sd[f"{name}.bn.bias"] = unit.bn_bias.detach().clone()
        sd[f"{name}.bn.running_mean"] = unit.bn.running_mean.clone()
        sd[f"{name}.bn.running_var"] = unit.bn.running_var.clone()
    sd["logits.conv3d.weight"] = model.logits.weight.detach().clone()
    sd["logits.conv3d.bias"] = model.logits.bias.detach().clone()
    return sd


class ScriptedDetector(torch.nn.Module):
    def forward(self, x, rescale: bool = True, resize: bool = True, return_features: bool = False):
        assert not rescale and not resize and return_features
        return x.mean(dim=(2, 3, 4)).repeat(1, 100)


def test_every_weights_format_loads(tmp_path):
    model = random_i3d(3)
    x = torch.rand(1, 3, 10, 224, 224) * 2 - 1
    with torch.no_grad():
        expected = model(x)
    with open(tmp_path / "i3d.ckpt", "wb") as f:
        pickle.dump(flax_state(model), f)
    torch.save(pytorch_i3d_state_dict(model), tmp_path / "rgb_imagenet.pt")
    torch.jit.script(ScriptedDetector()).save(str(tmp_path / "i3d_torchscript.pt"))
    with torch.no_grad():
        torch.testing.assert_close(load_i3d(tmp_path / "i3d.ckpt")(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(load_i3d(tmp_path / "rgb_imagenet.pt")(x), expected, atol=1e-5, rtol=1e-5)
        scripted = load_i3d(tmp_path / "i3d_torchscript.pt", trust_torchscript=True)(x)
    assert scripted.shape == (1, 300) and torch.allclose(scripted[:, :3], x.mean(dim=(2, 3, 4)))
    # TorchScript is a program: without the explicit flag it is refused, not run
    with pytest.raises(ValueError, match="TorchScript, which executes code.*--i3d_torchscript"):
        load_i3d(tmp_path / "i3d_torchscript.pt")


@pytest.mark.parametrize("content", [
    b"\x80\x04K\x01.",                                       # a pickle of the number 1
    pickle.dumps({"params": [1, 2], "batch_stats": {}}),         # right keys, wrong types
    pickle.dumps({"params": {}, "batch_stats": {}})[:-5],        # truncated
    b"PK\x03\x04 not really a zip",                            # a zip header on garbage
    b"",                                                         # empty
])
def test_a_malformed_i3d_weights_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "weights.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="--i3d_weights") as e:
        load_i3d(path)
    assert "\n" not in str(e.value)


def test_the_weights_unpickler_admits_only_numpy_arrays(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump({"params": Evil(), "batch_stats": {}}, f)
    with pytest.raises(ValueError, match="only numpy arrays are allowed"):
        load_i3d(tmp_path / "evil.ckpt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_i3d(tmp_path / "missing.pt")


# ---------------------------------------------------------------- the published value, end to end
def fvd_script(*args):
    return subprocess.run([sys.executable, FVD_SCRIPT, *args], env=script_env(), capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_black_versus_white_clips_give_the_published_fvd(tmp_path):
    # the TensorFlow reference's own test: 8 black and 8 white clips of 30 frames at 64x64 -> 151.39
    np.savez(tmp_path / "black.npz", np.zeros((8, 30, 64, 64, 3), np.uint8))
    np.savez(tmp_path / "white.npz", np.full((8, 30, 64, 64, 3), 255, np.uint8))
    proc = fvd_script("--samples", str(tmp_path / "black.npz"), "--reference", str(tmp_path / "white.npz"),
                      "--ref_stats", str(tmp_path / "white_stats.npz"), "--features_out", str(tmp_path / "f.npz"))
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("FVD: ") and float(last[5:]) == pytest.approx(151.39, abs=0.05)
    feats = np.load(tmp_path / "f.npz")
    assert feats["samples"].shape == (8, 400) and feats["reference"].shape == (8, 400)
    # the cached reference statistics give the same value without the reference videos
    again = fvd_script("--samples", str(tmp_path / "black.npz"), "--ref_stats", str(tmp_path / "white_stats.npz"))
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == last


@pytest.mark.parametrize("case,message", [
    ("nokey", "has no array 'arr_0'"),
    ("float", "expected uint8"),
    ("one", "at least 2 videos"),
    ("short", "at least 10 frames"),
    ("size", "frame sizes differ"),
])
def test_bad_input_is_a_clear_error(tmp_path, case, message):
    good = np.zeros((3, 12, 16, 16, 3), np.uint8)
    np.savez(tmp_path / "ref.npz", good)
    arrays = {"nokey": dict(videos=good), "float": dict(arr_0=good.astype(np.float32)),
              "one": dict(arr_0=good[:1]), "short": dict(arr_0=good[:, :9]),
              "size": dict(arr_0=np.zeros((3, 12, 32, 32, 3), np.uint8))}[case]
    np.savez(tmp_path / "s.npz", **arrays)
    proc = fvd_script("--samples", str(tmp_path / "s.npz"), "--reference", str(tmp_path / "ref.npz"))
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


# ---------------------------------------------------------------- PSNR and SSIM
def test_psnr_by_hand():
    a = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    b = a.clone()
    b[0] = 10  # mse 100 -> 10 log10(255^2 / 100)
    assert mse(b, a).tolist() == [100.0, 0.0]
    assert psnr_of_mse(100.0) == pytest.approx(10 * math.log10(255 ** 2 / 100))
    assert psnr_of_mse(0.0) == PSNR_CAP  # a set reproduced exactly
    with pytest.raises(ValueError, match="cannot be negative"):
        psnr_of_mse(-1.0)


def test_the_psnr_of_a_set_with_one_exact_frame_is_finite_and_comes_from_its_mean_squared_error():
    # two frames: one exact, one off by 10 everywhere. A mean of per-frame PSNRs would read
    # (100 + 28.13) / 2 = 64 dB; the set's PSNR is 10 log10(255^2 / 50) = 31.1 dB
    gt = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    pred = gt.clone()
    pred[1] = 10
    value = psnr_of_mse(mse(pred, gt).mean())
    assert math.isfinite(value) and value == pytest.approx(10 * math.log10(255 ** 2 / 50))
    # best of two samples per video: the lower error counts, per video
    errors = torch.tensor([[100.0, 25.0], [400.0, 400.0]])
    together, best = psnr_best_and_mean(errors)
    assert together == pytest.approx(10 * math.log10(255 ** 2 / 231.25))
    assert best == pytest.approx(10 * math.log10(255 ** 2 / 212.5))


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 32, 40, 3), dtype=np.uint8)
    y = np.clip(x.astype(int) + rng.integers(-40, 40, x.shape), 0, 255).astype(np.uint8)
    ours = ssim(torch.from_numpy(x), torch.from_numpy(y))
    for i in range(3):
        ref = structural_similarity(x[i], y[i], data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(ref, abs=1e-6)
    assert ssim(torch.from_numpy(x), torch.from_numpy(x)).allclose(torch.ones(3, dtype=torch.float64))


def test_best_of_n():
    mean, best = best_and_mean(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
    assert mean == 2.0 and best == 2.5


# ---------------------------------------------------------------- the BAIR protocol, end to end
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpiexec", path=str(VENV_BIN)) is None, reason="mpiexec not installed")
def test_bair_protocol_on_two_ranks(tmp_path):
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # 30-frame trajectories as prepare_bair.py writes them (smaller frames)
        np.savez(test_dir / f"traj_{i:06d}.npz", video=rng.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8))
    train = subprocess.run([sys.executable, str(REPO / "scripts" / "video_train.py"), *MICRO_FLAGS, "--seq_len", "16",
                            "--data_dir", str(test_dir), "--log_dir", str(tmp_path / "run"), "--max_steps", "1",
                            "--diffusion_steps", "50", "--batch_size", "1"],
                           env=script_env(), capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    out = tmp_path / "eval"
    proc = subprocess.run([shutil.which("mpiexec", path=str(VENV_BIN)), "-n", "2", sys.executable,
                           str(REPO / "scripts" / "eval_bair.py"), "--model_path", str(tmp_path / "run" / "ckpt_0000001.pt"),
                           "--data_dir", str(test_dir), "--samples_per_video", "2", "--batch_size", "3",
                           "--steps", "5", "--out_dir", str(out), "--allow_partial_test_set"],
                          env=script_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((out / "bair_eval.json").read_text())
    assert r["protocol_complete"] is False and "NOT the full protocol" in proc.stdout
    assert r["num_videos"] == 3 and r["samples_per_video"] == 2 and r["world_size"] == 2
    assert len(r["fvd_per_sample_index"]) == 2
    assert r["fvd_per_sample_index_mean"] == pytest.approx(np.mean(r["fvd_per_sample_index"]))
    assert r["fvd"] > 0 and r["psnr_best"] >= r["psnr_mean"] and 0 < r["ssim_mean"] <= r["ssim_best"] <= 1
    shards = [np.load(out / f"samples_shard{k}of2.npz") for k in range(2)]
    covered = sorted(set(np.concatenate([s["video_index"] for s in shards]).tolist()))
    assert covered == [0, 1, 2]  # every test video, each on exactly one rank
    assert sorted(zip(*(np.concatenate([s[k] for s in shards]).tolist() for k in ("video_index", "sample_index")))) \
        == [(v, s) for v in range(3) for s in range(2)]
    for shard in shards:
        for video, v in zip(shard["arr_0"], shard["video_index"]):
            assert video.shape == (16, 16, 16, 3)
            assert np.array_equal(video[0], np.load(test_dir / f"traj_{v:06d}.npz")["video"][0])  # the given frame
    assert proc.stdout.strip().splitlines()[-1].startswith("FVD: ")
    assert not list(out.glob(".*.tmp"))  # every file renamed into place

    def bair(*args):
        return subprocess.run([sys.executable, str(REPO / "scripts" / "eval_bair.py"), "--model_path",
                               str(tmp_path / "run" / "ckpt_0000001.pt"), "--data_dir", str(test_dir), "--steps", "2",
                               "--samples_per_video", "1", *args],
                              env=script_env(), capture_output=True, text=True, timeout=600)

    # the results of the run above are never mixed with a new run's
    again = bair("--out_dir", str(out), "--allow_partial_test_set")
    assert again.returncode == 2 and "holds the results of an earlier run" in again.stderr
    # 3 test videos are not the BAIR test split
    partial = bair("--out_dir", str(tmp_path / "e2"))
    assert partial.returncode == 2 and "holds 3 test videos" in partial.stderr and "256" in partial.stderr
    assert not (tmp_path / "e2").exists()  # refused before anything was written
    # a test file that cannot be read is an error, whatever the training run allowed
    (test_dir / "traj_000001.npz").write_bytes(b"truncated")
    broken = bair("--out_dir", str(tmp_path / "e3"), "--allow_partial_test_set")
    assert broken.returncode == 2 and "traj_000001.npz" in broken.stderr and "Traceback" not in broken.stderr


def test_bair_protocol_refuses_a_model_whose_window_is_too_short(tmp_path):
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        np.savez(test_dir / f"traj_{i:06d}.npz", video=rng.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8))
    from conftest import micro_config
    from video_diffusion.checkpoints import save_checkpoint
    from video_diffusion.build import create_model

    cfg = micro_config(seq_len=4, data_dir=str(test_dir))
    model = create_model(cfg)
    save_checkpoint(tmp_path / "run", 1, {"config": cfg.to_dict(), "model": model.state_dict(), "ema": {}})
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "eval_bair.py"), "--model_path",
                           str(tmp_path / "run" / "ckpt_0000001.pt"), "--data_dir", str(test_dir),
                           "--out_dir", str(tmp_path / "out"), "--allow_partial_test_set"],
                          env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "window is 4 frames" in proc.stderr


def test_a_shard_set_must_be_complete_and_of_one_run(tmp_path):
    from video_diffusion.evaluation.quality import check_shards, shard_name

    for r in range(2):
        np.savez(tmp_path / shard_name(r, 2), arr_0=np.zeros(1), run_id=np.array("abc"))
    check_shards(tmp_path, 2, "abc")
    with pytest.raises(RuntimeError, match="belongs to another run"):
        check_shards(tmp_path, 2, "xyz")
    np.savez(tmp_path / shard_name(2, 3), arr_0=np.zeros(1), run_id=np.array("old"))  # a stale 3-rank shard
    with pytest.raises(RuntimeError, match="expected the shards"):
        check_shards(tmp_path, 2, "abc")


def test_sampling_never_inherits_skip_bad_videos_from_training(tmp_path):
    from conftest import micro_config
    from video_diffusion.sampling.plan import test_dataset

    data = tmp_path / "videos"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.savez(data / f"v{i}.npz", video=rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8))
    (data / "v3.npz").write_bytes(b"truncated")
    cfg = micro_config(data_dir=str(data), skip_bad_videos=True)
    with pytest.raises(Exception, match="v3.npz"):
        test_dataset(cfg, 4, str(data))
    kept = test_dataset(cfg, 4, str(data), skip_bad=True)  # only when sampling asks for it, and counted
    assert len(kept) == 3 and [Path(p).name for p, _ in kept.skipped] == ["v3.npz"]


@pytest.mark.slow
def test_fvd_against_a_folder_of_real_videos(tmp_path):
    rng = np.random.default_rng(0)
    real = tmp_path / "real"
    real.mkdir()
    for i in range(3):
        np.savez(real / f"v{i}.npz", video=rng.integers(0, 256, (14, 16, 16, 3), dtype=np.uint8))
    np.savez(tmp_path / "s.npz", rng.integers(0, 256, (3, 12, 16, 16, 3), dtype=np.uint8))
    proc = fvd_script("--samples", str(tmp_path / "s.npz"), "--data_dir", str(real), "--features_out",
                      str(tmp_path / "f.npz"), "--batch_size", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("FVD: ")
    feats = np.load(tmp_path / "f.npz")
    assert feats["samples"].shape == (3, 400) and feats["reference"].shape == (3, 400)  # first 12 frames of each


@pytest.mark.slow
def test_cached_statistics_must_match_the_request(tmp_path):
    from video_diffusion.evaluation.fvd import save_stats

    clips = np.zeros((3, 12, 16, 16, 3), np.uint8)
    np.savez(tmp_path / "s.npz", clips)
    np.savez(tmp_path / "ref.npz", clips)
    np.savez(tmp_path / "other.npz", clips + 1)
    feats = np.random.default_rng(0).normal(size=(3, 400))
    proc = fvd_script("--samples", str(tmp_path / "s.npz"), "--reference", str(tmp_path / "ref.npz"),
                      "--ref_stats", str(tmp_path / "stats"))
    assert proc.returncode == 2 and "--ref_stats must name an .npz file" in proc.stderr
    # statistics of the first 12 frames of ref.npz
    from importlib.util import module_from_spec, spec_from_file_location
    spec = spec_from_file_location("video_fvd", FVD_SCRIPT)
    fvd_mod = module_from_spec(spec)
    spec.loader.exec_module(fvd_mod)
    source = f"--reference {(tmp_path / 'ref.npz').resolve()} ({fvd_mod.file_fingerprint(tmp_path / 'ref.npz')})"
    save_stats(tmp_path / "st.npz", feats, num_frames=12, height=16, width=16, source=source)
    # another reference beside a cache of this one: refused, not silently ignored
    other = fvd_script("--samples", str(tmp_path / "s.npz"), "--reference", str(tmp_path / "other.npz"),
                       "--ref_stats", str(tmp_path / "st.npz"))
    assert other.returncode == 2 and "was computed from --reference" in other.stderr and "other.npz" in other.stderr
    # 10 frames of samples against 12-frame statistics
    shorter = fvd_script("--samples", str(tmp_path / "s.npz"), "--num_frames", "10",
                         "--ref_stats", str(tmp_path / "st.npz"))
    assert shorter.returncode == 2 and "holds num_frames 12, the samples have 10" in shorter.stderr
    # statistics without a record of what they describe
    save_stats(tmp_path / "old.npz", feats)
    old = fvd_script("--samples", str(tmp_path / "s.npz"), "--ref_stats", str(tmp_path / "old.npz"))
    assert old.returncode == 2 and "does not record" in old.stderr


@pytest.mark.slow
def test_frame_counts_of_samples_and_reference_must_agree(tmp_path):
    np.savez(tmp_path / "s10.npz", np.zeros((3, 10, 16, 16, 3), np.uint8))
    np.savez(tmp_path / "r16.npz", np.zeros((3, 16, 16, 16, 3), np.uint8))
    asked = fvd_script("--samples", str(tmp_path / "s10.npz"), "--reference", str(tmp_path / "r16.npz"),
                       "--num_frames", "16")
    assert asked.returncode == 2 and "--num_frames 16: the samples have only 10 frames" in asked.stderr
    plain = fvd_script("--samples", str(tmp_path / "s10.npz"), "--reference", str(tmp_path / "r16.npz"))
    assert plain.returncode == 2 and "frame counts differ: samples 10, reference 16" in plain.stderr
