"""
The restructuring into diffusion/ models/ sampling/ training/ studies/ changed no behaviour:
the command line trains to the same weights (and losses, step by step) and samples the same
files (and the float videos behind them), bit for bit, as the code before it. The code before
it is taken from the repository's own history (``git archive``), so both run here, on the same
machine and kernels. (A change of one part in a million in a sampler's step weight fails it.)
"""

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, script_env

# The last commit before the restructuring (its tree is what "unchanged" means).
BEFORE = "8cb1617a95744f8f1df77ba005293b15e9d688ed"


def _old_tree(dest: Path) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and the repository's history: the old code is taken from commit " + BEFORE)
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", BEFORE + "^{commit}"], capture_output=True)
    if found.returncode:
        pytest.skip(f"commit {BEFORE} (the code before the restructuring) is not in this clone's history "
                    "(a shallow clone?); fetch it to run this check")
    archive = dest / "before.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), BEFORE], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest / "before", filter="data")
    return dest / "before"


def _probe(root: Path, out: Path) -> None:
    env = script_env()
    env["PYTHONPATH"] = str(root)  # that tree's library, not the installed one
    done = subprocess.run([sys.executable, str(REPO / "tests" / "behaviour_probe.py"), str(root), str(out)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_training_and_sampling_match_the_code_before_the_restructuring(tmp_path):
    before = _old_tree(tmp_path)
    _probe(before, tmp_path / "old")
    _probe(REPO, tmp_path / "new")
    old, new = tmp_path / "old", tmp_path / "new"

    losses_old, losses_new = (json.loads((d / "losses.json").read_text()) for d in (old, new))
    assert all(len(v) == 20 for v in losses_old.values())
    assert losses_new == losses_old  # every step's loss, as written to progress.csv

    for model in losses_old:
        a = torch.load(old / model / "ckpt_0000020.pt", map_location="cpu", weights_only=False)
        b = torch.load(new / model / "ckpt_0000020.pt", map_location="cpu", weights_only=False)
        for part in ("model",):
            assert a[part].keys() == b[part].keys()
            assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), f"{model}: {part} weights differ"
        # the EMA averages changed on purpose (their warm-up, training/ema.py): not compared; the
        # probe samples the raw weights
        assert a["ema"].keys() == b["ema"].keys()

    files_old = sorted(p.relative_to(old) for p in old.glob("samples/**/*.npz"))
    files_new = sorted(p.relative_to(new) for p in new.glob("samples/**/*.npz"))
    assert files_old == files_new and len(files_old) == 2 * 2 * (3 * 5 + 4)  # samples and floats per job
    for rel in files_old:
        with np.load(old / rel) as a, np.load(new / rel) as b:
            assert sorted(a.files) == sorted(b.files), rel
            for key in a.files:
                assert np.array_equal(a[key], b[key]), f"{rel}: {key} differs"
