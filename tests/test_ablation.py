"""
The ablation study: its variants differ only in what they claim to, every printed command
reproduces its cell, and the summaries are the figures' means and spreads.
"""

import math
from importlib.util import module_from_spec, spec_from_file_location

import numpy as np
import pytest

from conftest import REPO
from video_diffusion.config import config_differences
from video_diffusion.studies import ablation as study
from video_diffusion.checkpoints import load_checkpoint


def load_script(name):
    spec = spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXTRA = ["--num_channels", "8", "--batch_size", "2", "--num_workers", "0", "--save_interval", "2",
         "--log_interval", "1"]


def test_trained_variants_differ_only_in_the_ablated_fields(tmp_path):
    train = load_script("video_train")
    stored = {}
    for model in study.MODELS:
        argv = study.train_argv("tiny", model, str(tmp_path / model), 0, 2, EXTRA)
        train.main(argv)
        state = load_checkpoint(tmp_path / model / "ckpt_0000002.pt")
        stored[model] = state
    # the same data and the same training seed and length, for every model
    for model, state in stored.items():
        assert state["data"] == stored["b"]["data"], model
        assert state["config"]["train"]["seed"] == 0 and state["config"]["train"]["max_steps"] == 2
    diff = {m: config_differences(stored["b"]["config"], s["config"]) for m, s in stored.items()}
    assert diff["b"] == {}
    assert diff["c"] == {"uncondition_rate": (0.25, 1.0)}
    # f is the plain network: b without the recipe's given-frame input and kernel head
    plain = {"given_frame_input": (True, False), "kernel_head": (3, 0), "kernel_copy": ("scatter_mean", "gather"),
             "kernel_motion": (True, False), "kernel_motion_far": (True, False)}
    assert diff["f"] == plain
    # a differs from f in the mask input alone
    assert diff["a"] == {**plain, "mask_input": (True, False)}
    assert config_differences(stored["f"]["config"], stored["a"]["config"]) == {"mask_input": (True, False)}
    # the run directory is where they differ, and nothing else is ignored
    assert config_differences(stored["f"]["config"], stored["a"]["config"], ignore=()).keys() == \
        {"mask_input", "log_dir"}

    # a reused model is checked against the flags: model b's weights are refused as model a
    ablation = load_script("ablation")
    ablation.check_trained(tmp_path / "b" / "ckpt_0000002.pt", study.train_argv("tiny", "b", str(tmp_path / "b"), 0,
                                                                                  2, EXTRA))
    with pytest.raises(SystemExit, match="mask_input: True != False"):
        ablation.check_trained(tmp_path / "b" / "ckpt_0000002.pt",
                               study.train_argv("tiny", "a", str(tmp_path / "b"), 0, 2, EXTRA))


def test_rows_and_tasks():
    rows = study.study_rows("abcdef", [5, 10], [1.5, 2, 3])
    assert [r.key for r in rows] == ["a", "b", "c", "d5", "d10", "e1.5", "e2", "e3", "f"]
    by_key = {r.key: r for r in rows}
    assert by_key["d10"].model == "c" and by_key["d10"].options() == {"conditioning": "replacement",
                                                                      "resample_steps": 10}
    assert by_key["e2"].model == "b" and by_key["e2"].options() == {"guidance_scale": 2}
    assert study.models_of(rows) == ["a", "b", "c", "f"]
    # generation depends on the model only: measured on the first row of each model
    assert {study.generation_row(rows, r.model).key for r in rows} == {"a", "b", "c", "f"}
    tasks = {t.key: dict(t.options) for t in study.study_tasks(8, 16)}
    assert tasks["pred1"] == {"task": "prediction", "num_cond_frames": 1}
    assert tasks["infill"] == {"task": "infill", "cond_frames": "0,7"}
    assert tasks["gen"] == {"task": "generation", "num_frames": 16}
    with pytest.raises(ValueError, match="--variants"):
        study.study_rows("abz", [5], [2])
    with pytest.raises(ValueError, match="--resample"):
        study.study_rows("d", [1], [2])
    with pytest.raises(ValueError, match="--guidance"):
        study.study_rows("e", [5], [1.0])


def test_each_printed_evaluate_command_gives_its_cells_options():
    ablation = load_script("ablation")
    evaluate = load_script("evaluate")
    args = ablation.build_parser().parse_args(["--quick"])
    for k, v in ablation.QUICK.items():
        setattr(args, k, v)
    rows = study.study_rows(args.variants, [5, 10], [1.5, 3])
    tasks = study.study_tasks(8, args.gen_frames)
    cells = list(ablation.cells_of(args, rows, tasks))
    assert len(cells) == (len(rows) * 3 + 4) * args.seeds  # generation once per model
    from video_diffusion.sampling.options import sample_options_from
    for row, task, seed in cells:
        opts = ablation.cell_options(args, row, task, seed)
        parsed = evaluate.build_parser().parse_args(["--model_path", "m.pt", *study.sample_argv(opts)])
        assert sample_options_from(parsed) == opts, (row.key, task.key)


def test_summaries_and_table():
    cells = [{"psnr_mean": 10.0, "ssim_mean": 0.5, "sample_seconds_per_video": 1.0},
             {"psnr_mean": 12.0, "ssim_mean": 0.7, "sample_seconds_per_video": 3.0},
             {"psnr_mean": 14.0, "ssim_mean": 0.6, "sample_seconds_per_video": 2.0, "fvd": float("nan")}]
    s = study.figure_summary(cells)
    assert s["psnr_mean"]["mean"] == pytest.approx(12.0) and s["psnr_mean"]["std"] == pytest.approx(2.0)
    assert s["ssim_mean"]["std"] == pytest.approx(float(np.std([0.5, 0.7, 0.6], ddof=1)))
    assert "fvd" not in s and s["psnr_mean"]["n"] == 3  # a NaN is not a figure
    rows = study.study_rows("bc", [], [])
    tasks = study.study_tasks(8, 16)
    summary = {"b": {t.key: s for t in tasks}, "c": {"pred1": s}}
    base = {t.key: {"copy_last_given": {"psnr": 14.5, "ssim": 0.4}, "black": {"psnr": 16.25, "ssim": 0.5}}
            for t in tasks if not t.generation}
    text = study.markdown_tables(rows, tasks, summary, base, samples_per_video=1)
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "12.00 ± 2.00" in lines["b"] and "0.600 ± 0.100" in lines["b"]
    assert lines["c"].count("–") >= 5  # missing cells are marked, not invented
    assert "14.50" in text and "16.25" in text
    assert "Best of" not in text
    assert not math.isnan(s["sample_seconds_per_video"]["mean"])


def test_each_training_seed_is_shown_on_its_own():
    rows = study.study_rows("bc", [], [])
    tasks = study.study_tasks(8, 16)
    seed0 = study.figure_summary([{"psnr_mean": 20.0, "ssim_mean": 0.8}, {"psnr_mean": 22.0, "ssim_mean": 0.9}])
    seed1 = study.figure_summary([{"psnr_mean": 30.0, "ssim_mean": 0.6}])
    gen = [study.figure_summary([{"fvd": 300.0}]), study.figure_summary([{"fvd": 500.0}])]
    by_seed = {"b": {"pred2": [seed0, seed1], "gen": gen}, "c": {"pred2": [seed1, seed0]}}
    summary = {"b": {"pred2": study.figure_summary([{"psnr_mean": 25.0}])}}
    text = study.markdown_tables(rows, tasks, summary, {}, samples_per_video=1, by_seed=by_seed)
    per_seed = text[text.index("Each training seed"):]
    lines = {line.split(" | ")[0].strip("| "): line for line in per_seed.splitlines() if line.startswith("| ")}
    assert "21.00 / 30.00" in lines["b"] and "0.850 / 0.600" in lines["b"] and "300 / 500" in lines["b"]
    assert "30.00 / 21.00" in lines["c"]
    # with one training seed there is nothing to set side by side
    one = {"b": {"pred2": [seed0]}}
    assert "Each training seed" not in study.markdown_tables(rows, tasks, summary, {}, 1, by_seed=one)


def test_cells_scored_on_other_test_videos_are_refused():
    ablation = load_script("ablation")
    args = ablation.build_parser().parse_args([])
    args.train_seeds = 2
    rows = study.study_rows("b", [], [])
    tasks = [t for t in study.study_tasks(8, 16) if t.key == "pred2"]
    same = {"copy_last_given": {"psnr": 14.5, "ssim": 0.4}, "black": {"psnr": 16.25, "ssim": 0.5}}
    records = {(ts, "b", "pred2", 0): {"metrics": {"psnr_mean": 20.0 + ts, "ssim_mean": 0.8, "baselines": same}}
               for ts in range(2)}
    summary, by_seed, baselines = ablation.tables_of(args, rows, tasks, records)
    assert baselines["pred2"] == same and summary["b"]["pred2"]["psnr_mean"]["mean"] == pytest.approx(20.5)
    # every training seed is scored on the same held-out videos, so their baselines must agree
    records[1, "b", "pred2", 0]["metrics"]["baselines"] = {**same, "black": {"psnr": 17.0, "ssim": 0.5}}
    with pytest.raises(RuntimeError, match="same test videos"):
        ablation.tables_of(args, rows, tasks, records)
