"""Previews during training: pictures and scores of held-out predictions at --sample_interval."""

import csv
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, VENV_BIN, script_env
from conftest import MICRO_FLAGS

MPIEXEC = shutil.which("mpiexec", path=str(VENV_BIN)) or shutil.which("mpiexec")


def train(run, *launcher, extra=()):
    cmd = [*launcher, sys.executable, str(REPO / "scripts" / "video_train.py"), *MICRO_FLAGS, "--log_dir", str(run),
           "--max_steps", "5", "--sample_interval", "2", "--sample_videos", "3", "--sample_cond_frames", "1",
           "--sample_steps", "3", "--log_interval", "2", *extra]
    proc = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_previews_at_the_interval_and_at_the_end(tmp_path, ranks):
    if ranks == 2 and MPIEXEC is None:
        pytest.skip("mpiexec not installed (pip install mpich mpi4py)")
    launcher = (MPIEXEC, "-n", "2") if ranks == 2 else ()
    proc = train(tmp_path / "run", *launcher, extra=("--batch_size", "1") if ranks == 2 else ())
    samples = tmp_path / "run" / "samples"
    # steps 2 and 4, and the end (step 5)
    assert sorted(p.name for p in samples.glob("*.png")) == ["step_0000002.png", "step_0000004.png",
                                                              "step_0000005.png"]
    assert sorted(p.name for p in samples.glob("*.gif")) == ["step_0000002.gif", "step_0000004.gif",
                                                              "step_0000005.gif"]
    # 3 videos x (ground truth, prediction) + 1 generated video; 16-px frames shown 4x (64 px + 4 border)
    picture = np.asarray(Image.open(samples / "step_0000002.png"))
    assert picture.shape == (7 * 68 + 3 * 6, 4 * 68, 3)
    assert tuple(picture[0, 0]) == (220, 30, 30)  # the given frame of the first video outlined
    with open(tmp_path / "run" / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    scored = {int(r["step"]): float(r["preview_psnr"]) for r in rows if r["preview_psnr"]}
    assert sorted(scored) == [2, 4, 5] and all(0 < v < 100 for v in scored.values())
    assert all(-1 <= float(r["preview_ssim"]) <= 1 for r in rows if r["preview_ssim"])  # SSIM lies in [-1, 1]
    assert proc.stdout.count("preview at step") == 3
    assert (tmp_path / "run" / "ckpt_0000005.pt").is_file()


@pytest.mark.slow
def test_previews_are_off_by_default(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "video_train.py"), *MICRO_FLAGS, "--log_dir",
                           str(tmp_path / "run"), "--max_steps", "2"], env=script_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "run" / "samples").exists() and "preview at step" not in proc.stdout
