"""The quality harness: its baselines by hand, an oracle scored perfectly, and the script end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, micro_config, script_env
from conftest import MICRO_FLAGS
from video_diffusion.distributed import DistContext
from video_diffusion.evaluation.metrics import psnr_of_mse
from video_diffusion.evaluation.quality import copy_last_given, evaluate, format_table, set_scores, video_scores
from video_diffusion.sampling.options import SampleOptions
from video_diffusion.sampling.plan import resolve_plan

CPU = DistContext(0, 1, 0, 1, torch.device("cpu"), "single")


def test_copy_last_given_copies_the_latest_earlier_frame_or_the_first_later_one():
    gt = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((6, 2, 2, 1), np.uint8)
    out = copy_last_given(gt, np.array([0, 1, 0, 0, 1, 0]))
    assert out[:, 0, 0, 0].tolist() == [1, 1, 1, 1, 4, 4]
    with pytest.raises(ValueError, match="at least one given frame"):
        copy_last_given(gt, np.zeros(6))


def test_baseline_scores_by_hand():
    # frame f is flat grey 10 * f: copy-last errs by 10 (f - 1) after two given frames, black by 10 f
    gt = (10 * np.arange(8, dtype=np.uint8))[:, None, None, None] * np.ones((8, 16, 16, 3), np.uint8)
    mask = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    copy_mse, _ = video_scores(copy_last_given(gt, mask), gt, mask)
    black_mse, black_ssim = video_scores(np.zeros_like(gt), gt, mask)
    assert copy_mse == pytest.approx(np.mean([(10 * (f - 1)) ** 2 for f in range(2, 8)]))
    assert black_mse == pytest.approx(np.mean([(10 * f) ** 2 for f in range(2, 8)]))
    assert black_ssim < 1
    # the set's PSNR comes from the mean squared error over all its generated frames
    black = set_scores([(black_mse, black_ssim), (0.0, 1.0)])
    assert black["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / (black_mse / 2)))
    assert black["ssim"] == pytest.approx((black_ssim + 1) / 2)
    # identical frames: no error and SSIM 1; a set of them reads the 100 dB cap
    assert video_scores(gt, gt, mask) == (0.0, pytest.approx(1.0))
    assert set_scores([video_scores(gt, gt, mask)])["psnr"] == 100.0


class StaticOracle(torch.nn.Module):
    """Predicts x_0 of a video whose frames all equal its given frames (read from the input)."""

    def forward(self, x, t, obs_mask=None):
        w = obs_mask[:, None, :, None, None]
        mean = (x * w).sum(dim=2, keepdim=True) / w.sum(dim=2, keepdim=True).clamp(min=1)
        return mean.expand_as(x)


@pytest.fixture
def static_videos(tmp_path):
    folder = tmp_path / "static"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        frame = rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
        np.savez(folder / f"v{i}.npz", video=np.repeat(frame, 12, axis=0))
    return folder


@pytest.mark.slow
def test_an_oracle_scores_perfectly_and_its_fvd_is_zero(static_videos):
    from video_diffusion.evaluation.weights import load_i3d

    cfg = micro_config(seq_len=10, predict_xstart=True, data_dir=str(static_videos))
    opts = SampleOptions(task="prediction", num_cond_frames=2, num_samples=3, samples_per_video=2, steps=5,
                         data_dir=str(static_videos), batch_size=4)
    result = evaluate(cfg, StaticOracle(), resolve_plan(cfg, opts), CPU, i3d=load_i3d(), grid_videos=2)
    m = result["metrics"]
    assert m["num_videos"] == 3 and m["samples_per_video"] == 2 and m["num_frames"] == 10
    assert m["psnr_mean"] == pytest.approx(100.0) and m["psnr_best"] == pytest.approx(100.0)
    assert m["ssim_mean"] == pytest.approx(1.0)
    # the videos are static, so copying the last given frame is perfect too; black is not
    assert m["baselines"]["copy_last_given"]["psnr"] == pytest.approx(100.0)
    assert m["baselines"]["black"]["psnr"] < 20
    # sample s of every video against the real clips: the same clips, so FVD 0 (the pooled FVD
    # over both samples differs only through the covariance of 6 clips holding 3 twice)
    assert m["fvd_num_real"] == 3 and len(m["fvd_per_sample_index"]) == 2
    assert max(abs(f) for f in m["fvd_per_sample_index"]) < 1e-3
    # the picture: 2 videos x (ground truth + 2 samples) strips of 10 frames, 4x upscaled (16 px -> 64)
    grid = result["grid"]
    assert grid.width == 10 * (64 + 4) and grid.height == 2 * 3 * (64 + 4) + 6
    table = format_table(m)
    assert "copy last given frame" in table and "black frame" in table and "FVD" in table


def test_best_of_k_is_at_least_the_mean_and_samples_differ_by_seed(static_videos):
    class Noisy(torch.nn.Module):  # an x_0 prediction that depends on the noise: samples differ
        def forward(self, x, t, obs_mask=None):
            return (StaticOracle()(x, t, obs_mask) + 0.3 * x).clamp(-1, 1)

    cfg = micro_config(seq_len=6, predict_xstart=True, data_dir=str(static_videos))
    opts = SampleOptions(task="infill", cond_frames="0,5", num_samples=3, samples_per_video=3, steps=4,
                         data_dir=str(static_videos))
    m = evaluate(cfg, Noisy(), resolve_plan(cfg, opts), CPU)["metrics"]
    assert m["psnr_best"] > m["psnr_mean"] and m["ssim_best"] >= m["ssim_mean"]
    assert "fvd" not in m  # no I3D given


@pytest.mark.slow
def test_evaluate_script_on_a_trained_checkpoint(tmp_path):
    train = subprocess.run([sys.executable, str(REPO / "scripts" / "video_train.py"), *MICRO_FLAGS,
                            "--log_dir", str(tmp_path / "run"), "--max_steps", "2"],
                           env=script_env(), capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    cmd = [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--model_path", str(tmp_path / "run" / "ckpt_0000002.pt"),
           "--task", "prediction", "--num_cond_frames", "1", "--num_samples", "4", "--steps", "3",
           "--out_dir", str(tmp_path / "eval")]
    proc = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "eval" / "000_prediction"
    m = json.loads((out / "quality.json").read_text())
    for key in ("psnr_mean", "ssim_mean", "baselines", "sample_seconds_per_video", "sampler", "weights", "options"):
        assert key in m
    assert "FVD not computed: I3D needs >= 10 frames" in proc.stdout
    assert "copy last given frame" in proc.stdout and (out / "grid.png").is_file()
    # the black baseline, recomputed from the held-out videos the harness used
    from video_diffusion.data import MovingDigits
    from video_diffusion.seeds import HELD_OUT_SEED, seed_of
    data = MovingDigits(16, 4, channels=3, seed=seed_of(0, HELD_OUT_SEED))
    gt = torch.from_numpy(np.stack([data.frames(i) for i in range(4)]))[:, 1:]
    expected = psnr_of_mse(gt.double().square().mean())  # over all generated frames of the set
    assert m["baselines"]["black"]["psnr"] == pytest.approx(expected)
