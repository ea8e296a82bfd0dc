import pytest
"""scripts/device_check.py --smoke: the GPU check's every step runs on a CPU too, so it cannot rot."""

import json
import subprocess
import sys

from conftest import REPO, script_env


@pytest.mark.slow
def test_device_check_smoke_writes_its_figures_and_picture(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "device_check.py"), "--smoke", "--out_dir", str(out)],
                          env=script_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "device_check.json").read_text())
    assert report["failures"] == {}
    assert report["environment"]["torch"]
    # without a GPU every CUDA test skips with its reason (and none fails)
    if not report["environment"]["gpu"]:
        assert report["cuda_tests"].get("skipped", 0) >= 5 and not report["cuda_tests"].get("failed")
        assert "needs a CUDA GPU" in (out / "cuda_tests.txt").read_text()
    bench = report["benchmark"][0]
    assert bench["videos_per_s"] > 0 and bench["sample_s_per_video"] > 0
    q = report["quality"]
    assert q["steps"] == 3 and set(q["tasks"]) == {"pred2", "infill"}
    for row in q["tasks"].values():
        assert {"model", "copy_last_given", "black", "perfect"} <= set(row)
    assert (out / "quality_grid.png").stat().st_size > 1000
    assert len(list(out.iterdir())) <= 8
    assert "quality run:" in proc.stdout and "cuda tests:" in proc.stdout
