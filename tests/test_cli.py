"""The training script as a user runs it: flags, errors, a short run, and resuming a run directory."""

import subprocess
import sys

import pytest

from conftest import MICRO_FLAGS, REPO, script_env

SCRIPT = str(REPO / "scripts" / "video_train.py")



def train(*args, timeout=300):
    return subprocess.run([sys.executable, SCRIPT, *args], env=script_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_help_explains_every_flag():
    proc = train("--help")
    assert proc.returncode == 0
    for flag in ("--image_size --num_channels --num_res_blocks --attention_resolutions --num_heads --dropout "
                 "--learn_sigma --diffusion_steps --noise_schedule --timestep_respacing --predict_xstart "
                 "--use_scale_shift_norm --use_checkpoint --seq_len --max_num_mask_frames --mask_range "
                 "--uncondition_rate --lr --batch_size --microbatch --ema_rate --log_interval --save_interval "
                 "--resume_checkpoint --data_dir --seed --log_dir --max_steps --precision --mask_input "
                 "--preset").split():
        assert flag in proc.stdout, flag


@pytest.mark.parametrize("args,flag", [
    (["--preset", "tiny", "--max_num_mask_frames", "8"], "--max_num_mask_frames"),
    (["--preset", "tiny", "--image_size", "30"], "--image_size"),
    (["--preset", "tiny", "--microbatch", "3"], "--microbatch"),
    (["--preset", "huge"], "--preset"),
    (["--preset", "tiny", "--mask_range", "3,1"], "--mask_range"),
    (["--preset", "tiny", "--precision", "fp8"], "--precision"),
    (["--preset", "tiny", "--learn_sigma", "maybe"], "--learn_sigma"),
    (["--preset", "tiny", "--ema_rate", "1.5"], "--ema_rate"),
    (["--preset", "tiny", "--noise_schedule", "linear", "--diffusion_steps", "10"], "--diffusion_steps"),
    (["--preset", "tiny", "--seed", "-1"], "--seed must be a non-negative integer"),
    (["--preset", "tiny", "--timestep_respacing", "ddimx"], "--timestep_respacing 'ddimx': 'ddimN' needs a step count"),
    (["--preset", "tiny", "--attention_resolutions", "7"], "--attention_resolutions 7: the UNet never runs at 7"),
    (["--preset", "tiny", "--dist_timeout", "0"], "--dist_timeout"),
])
def test_impossible_flag_values_exit_non_zero_naming_the_flag(tmp_path, args, flag):
    proc = train(*args, "--log_dir", str(tmp_path / "run"))
    assert proc.returncode != 0
    assert flag in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()  # nothing started


@pytest.mark.slow
def test_a_log_dir_or_out_dir_that_is_a_file_is_a_named_error(tmp_path):
    (tmp_path / "taken").write_text("a file")
    proc = train("--preset", "tiny", "--log_dir", str(tmp_path / "taken"))
    assert proc.returncode == 2 and "--log_dir" in proc.stderr and "is a file" in proc.stderr
    assert "Traceback" not in proc.stderr
    for script in ("video_sample.py", "evaluate.py", "eval_bair.py"):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--model_path", str(tmp_path / "m.pt"),
                               "--data_dir", str(tmp_path), "--out_dir", str(tmp_path / "taken" / "sub")],
                              env=script_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "--out_dir" in proc.stderr and "is a file" in proc.stderr, (script, proc.stderr)
    for script in ("ablation.py", "device_check.py"):  # the same check, for the studies' output folders
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--out_dir", str(tmp_path / "taken" / "x")],
                              env=script_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "--out_dir" in proc.stderr and "is a file" in proc.stderr, (script, proc.stderr)


@pytest.mark.slow
def test_short_run_then_resume_from_the_run_directory(tmp_path):
    run = tmp_path / "run"
    first = train(*MICRO_FLAGS, "--log_dir", str(run), "--max_steps", "2", "--save_interval", "2")
    assert first.returncode == 0, first.stderr
    assert (run / "ckpt_0000002.pt").is_file()
    assert len((run / "progress.csv").read_text().splitlines()) == 3
    assert "step       2 | loss" in first.stdout
    # Only the run directory and a new step budget: the stored configuration is reused.
    second = train("--log_dir", str(run), "--max_steps", "3")
    assert second.returncode == 0, second.stderr
    assert f"resumed from {run / 'ckpt_0000002.pt'} at step 2" in second.stdout
    assert (run / "ckpt_0000003.pt").is_file()
    assert len((run / "progress.csv").read_text().splitlines()) == 4
    # changing the architecture of an existing run is refused
    third = train("--log_dir", str(run), "--max_steps", "4", "--num_channels", "16")
    assert third.returncode != 0 and "--num_channels" in third.stderr


def test_missing_resume_checkpoint_is_a_clear_error(tmp_path):
    proc = train(*MICRO_FLAGS, "--log_dir", str(tmp_path / "run"), "--resume_checkpoint", str(tmp_path / "nope.pt"))
    assert proc.returncode != 0 and "nope.pt" in proc.stderr


def export_digits(out_dir, *args):
    return subprocess.run([sys.executable, str(REPO / "datasets" / "make_synthetic.py"), "--out_dir", str(out_dir),
                           "--num_videos", "6", "--image_size", "16", "--seq_len", "6", *args],
                          env=script_env(), capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_train_on_the_exported_synthetic_folder(tmp_path):
    export = export_digits(tmp_path / "digits")
    assert export.returncode == 0, export.stderr
    assert len(list((tmp_path / "digits").glob("*.npz"))) == 6 and not list((tmp_path / "digits").glob("*.gif"))
    run = tmp_path / "run"
    proc = train(*MICRO_FLAGS, "--log_dir", str(run), "--data_dir", str(tmp_path / "digits"), "--max_steps", "2")
    assert proc.returncode == 0, proc.stderr
    assert "data: 6 videos from" in proc.stdout and (run / "ckpt_0000002.pt").is_file()
    # the same videos exported again as GIFs into the same folder: each would count twice
    assert export_digits(tmp_path / "digits", "--format", "gif").returncode == 0
    proc = train(*MICRO_FLAGS, "--log_dir", str(tmp_path / "run2"), "--data_dir", str(tmp_path / "digits"))
    assert proc.returncode != 0
    assert "6 video(s) are stored under two or more extensions (digits_000000.gif and digits_000000.npz" in proc.stderr


@pytest.mark.parametrize("script,args", [
    ("scripts/video_train.py", ["--preset", "tiny", "--max_step", "3"]),
    ("scripts/video_sample.py", ["--model_path", "x.pt", "--num_sample", "3"]),
    ("scripts/evaluate.py", ["--model_path", "x.pt", "--samples_per", "3"]),
    ("scripts/eval_bair.py", ["--model_path", "x.pt", "--data_d", "d"]),
    ("scripts/video_fvd.py", ["--samples", "s.npz", "--ref", "r.npz"]),
    ("scripts/benchmark.py", ["--smok"]),
    ("scripts/benchmark_data.py", ["--format", "npz"]),
    ("datasets/make_synthetic.py", ["--out_dir", "d", "--num_vid", "3"]),
    ("datasets/prepare_bair.py", ["--out_dir", "d", "--tfrecord", "x"]),
    ("scripts/compare_samplers.py", ["--model_path", "x.pt", "--num_cond", "2"]),
    ("scripts/fault_injection.py", ["--round", "2"]),
    ("scripts/ablation.py", ["--quic"]),
    ("scripts/digits_ceiling.py", ["--num_vid", "3"]),
])
def test_abbreviated_flags_are_refused(tmp_path, script, args):
    proc = subprocess.run([sys.executable, str(REPO / script), *args], env=script_env(), capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr, proc.stderr


def test_print_config_shows_what_the_preset_sets(tmp_path):
    proc = train("--preset", "tiny", "--lr", "1e-3", "--log_dir", str(tmp_path / "run"), "--print_config")
    assert proc.returncode == 0, proc.stderr
    assert "--lr 0.001  (flag)" in proc.stdout and "--image_size 32  (preset tiny)" in proc.stdout
    assert "--mask_input True  (default)" in proc.stdout
    assert not (tmp_path / "run").exists()
    help_text = train("--help").stdout
    assert "tiny: " in help_text and "bair64: 2e-05" in help_text  # each flag names the presets' values


@pytest.mark.slow
def test_bad_data_dir_is_a_named_error(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "clip.mp4").write_bytes(b"not a video")
    proc = train(*MICRO_FLAGS, "--log_dir", str(tmp_path / "run"), "--data_dir", str(tmp_path / "v"))
    assert proc.returncode != 0 and "clip.mp4: cannot be decoded" in proc.stderr
    proc = train(*MICRO_FLAGS, "--log_dir", str(tmp_path / "run2"), "--data_dir", str(tmp_path / "v"),
                 "--skip_bad_videos")
    assert proc.returncode != 0 and "none of its 1 videos is usable" in proc.stderr


@pytest.mark.parametrize("script", ["scripts/video_sample.py", "scripts/eval_bair.py", "scripts/video_fvd.py",
                                    "scripts/evaluate.py",
                                    "scripts/benchmark.py", "scripts/benchmark_data.py", "datasets/prepare_bair.py",
                                    "datasets/make_synthetic.py"])
def test_every_entry_point_explains_itself(script):
    proc = subprocess.run([sys.executable, str(REPO / script), "--help"], env=script_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and len(proc.stdout.splitlines()) > 10
