"""scripts/learning_curve.py on a tiny run: every checkpoint measured once, references beside them, resumable."""

import json
import subprocess
import sys

import pytest

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
    assert (out / "curve.png").stat().st_size > 1000
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
