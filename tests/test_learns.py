"""
The model learns the job: a few minutes of CPU training with the tiny preset, then its
2 -> 6 predictions of held-out videos must beat copying the last given frame forward.
Slow (minutes): deselect with -m "not slow".
"""

import json
import subprocess
import sys

import pytest

from conftest import REPO, script_env

STEPS = 500


@pytest.mark.slow
def test_tiny_preset_predictions_beat_copying_the_last_frame(tmp_path):
    env = {**script_env(), "OMP_NUM_THREADS": "2"}
    train = subprocess.run([sys.executable, str(REPO / "scripts" / "video_train.py"), "--preset", "tiny",
                            "--max_steps", str(STEPS), "--sample_interval", "0", "--log_dir", str(tmp_path / "run")],
                           env=env, capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stderr
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), "--model_path",
                           str(tmp_path / "run" / f"ckpt_{STEPS:07d}.pt"), "--task", "prediction",
                           "--num_cond_frames", "2", "--num_samples", "16", "--steps", "20",
                           "--out_dir", str(tmp_path / "eval")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "eval" / "000_prediction" / "quality.json").read_text())
    assert m["num_videos"] == 16
    assert m["psnr_mean"] > m["baselines"]["copy_last_given"]["psnr"], proc.stdout
