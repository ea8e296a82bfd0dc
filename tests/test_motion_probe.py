"""The motion probe (studies/motion.py, scripts/motion_probe.py): a network trained only on x_0
from pure noise with the first two frames given, scored by the learning curve's motion use."""

import json
import sys

import pytest
import torch

from conftest import MICRO_FLAGS, REPO, micro_config
from video_diffusion.build import create_model
from video_diffusion.evaluation.curve import x0_from_noise
from video_diffusion.studies.motion import focused_motion_training


def test_the_probe_trains_x0_from_noise_and_scores_it_with_the_curve_s_motion_use():
    cfg = micro_config(predict_xstart=True, noise_schedule="cosine", given_frame_input=True, lr_warmup_steps=0)
    lines = []
    rows = focused_motion_training(cfg, steps=3, eval_every=2, num_videos=2, log=lines.append)
    assert [r["step"] for r in rows] == [0, 2, 3] and [r["videos"] for r in rows] == [0, 4, 6]
    assert rows[0]["loss"] is None and all(r["loss"] > 0 for r in rows[1:])
    assert all(len(r["model"]) == len(r["last_given_only"]) == 2 for r in rows)  # frames 2 and 3 of 4
    assert rows[2]["model"] != rows[0]["model"]  # it trained
    for r in rows:
        assert r["motion_use"] == pytest.approx(sum(r["last_given_only"]) / 2 - sum(r["model"]) / 2)
    assert len(lines) == 3 and "motion use" in lines[-1]
    # step 0 is the untrained network of the same seed, scored by the learning curve's function
    torch.manual_seed(0)
    fresh = create_model(cfg).eval()
    with torch.no_grad():
        assert x0_from_noise(cfg, fresh, num_videos=2)["model"] == rows[0]["model"]


def test_the_probe_names_what_it_cannot_do():
    with pytest.raises(ValueError, match="--predict_xstart"):
        focused_motion_training(micro_config(), steps=1, eval_every=1)
    with pytest.raises(ValueError, match="at least 2"):
        focused_motion_training(micro_config(predict_xstart=True), steps=1, eval_every=1, num_given=1)


def test_the_script_writes_its_scores(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import motion_probe
    finally:
        sys.path.pop(0)
    flags = MICRO_FLAGS + ["--predict_xstart", "true", "--noise_schedule", "cosine"]
    motion_probe.main(flags + ["--steps", "2", "--eval_every", "1", "--num_videos", "2",
                               "--json", str(tmp_path / "probe.json")])
    scores = json.loads((tmp_path / "probe.json").read_text())["scores"]
    assert [s["step"] for s in scores] == [0, 1, 2]
    assert "motion use" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # an epsilon network: named, before anything trains
        motion_probe.main(MICRO_FLAGS + ["--steps", "1"])
    assert "--predict_xstart must be true" in capsys.readouterr().err
