"""video_sample.py end to end, on checkpoints written by video_train.py."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, VENV_BIN, script_env
from conftest import MICRO_FLAGS

SAMPLE = str(REPO / "scripts" / "video_sample.py")
MPIEXEC = shutil.which("mpiexec", path=str(VENV_BIN)) or shutil.which("mpiexec")


def run(cmd, timeout=300):
    return subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for name, extra in (("masked", []), ("no_uncond", ["--uncondition_rate", "0"])):
        proc = run([sys.executable, str(REPO / "scripts" / "video_train.py"), *MICRO_FLAGS, *extra,
                    "--log_dir", str(root / name), "--max_steps", "2", "--diffusion_steps", "50"])
        assert proc.returncode == 0, proc.stderr
        out[name] = root / name / "ckpt_0000002.pt"
    return out


def run_file(out_dir, name):
    """The file ``name`` written by the one sampling run under ``out_dir`` (each run makes its own folder)."""
    runs = [p for p in out_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0] / name


def sample(ckpt, out_dir, *args, launcher=()):
    return run([*launcher, sys.executable, SAMPLE, "--model_path", str(ckpt), "--out_dir", str(out_dir), *args])


def test_prediction_with_only_model_path_and_task_flags(checkpoints, tmp_path):
    proc = sample(checkpoints["masked"], tmp_path, "--task", "prediction", "--num_cond_frames", "1",
                  "--num_samples", "3", "--save_gifs", "2")
    assert proc.returncode == 0, proc.stderr
    assert "with EMA 0.9999 at step 2" in proc.stdout
    f = np.load(run_file(tmp_path, "samples_3x4x16x16x3.npz"))
    assert f["arr_0"].dtype == np.uint8 and f["arr_0"].shape == (3, 4, 16, 16, 3)
    assert f["gt"].shape == (3, 4, 16, 16, 3) and f["obs_mask"].tolist() == [[1, 0, 0, 0]] * 3
    assert np.array_equal(f["arr_0"][:, 0], f["gt"][:, 0])  # the given frame, exactly
    assert not np.array_equal(f["arr_0"][:, 1:], f["gt"][:, 1:])
    out = run_file(tmp_path, "")
    for name in ("sample_0000.gif", "sample_0000.png", "sample_0001.gif", "sample_0001.png", "sample_0001.mp4"):
        assert (out / name).is_file()
    assert not (out / "sample_0002.gif").exists()
    from PIL import Image, ImageSequence
    import imageio.v3 as iio

    gif = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(out / "sample_0001.gif"))])
    assert gif.shape == (4, 16, 16, 3)
    assert iio.imread(out / "sample_0001.mp4").shape[0] == 4
    strip = np.asarray(Image.open(out / "sample_0000.png"))
    assert strip.shape == (20, 4 * 20, 3)
    assert tuple(strip[0, 0]) == (220, 30, 30) and tuple(strip[0, 20]) == (255, 255, 255)  # frame 0 outlined


@pytest.mark.slow
def test_a_second_run_never_overwrites_the_first(checkpoints, tmp_path):
    first = sample(checkpoints["masked"], tmp_path, "--task", "prediction", "--num_samples", "2", "--steps", "3")
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    second = sample(checkpoints["masked"], tmp_path, "--task", "infill", "--cond_frames", "0", "--num_samples", "2",
                    "--steps", "3")
    assert second.returncode == 0, second.stderr
    assert all(p.read_bytes() == data for p, data in before.items())  # the first run's files untouched
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["000_prediction", "001_infill"]
    for folder in folders:
        assert (tmp_path / folder / "samples_2x4x16x16x3.npz").is_file()
        assert json.loads((tmp_path / folder / "sample_options.json").read_text())["task"] == folder[4:]
    assert "sampler dpmpp_2m, 3 steps" in second.stdout and "s per video" in second.stdout


@pytest.mark.slow
def test_default_sampler_is_dpmpp_2m_20_and_others_are_one_flag_away(checkpoints, tmp_path):
    proc = sample(checkpoints["masked"], tmp_path / "d", "--num_samples", "1")
    assert proc.returncode == 0, proc.stderr
    assert "sampler dpmpp_2m, 20 steps (20 network evaluations), logsnr grid" in proc.stdout
    proc = sample(checkpoints["masked"], tmp_path / "i", "--num_samples", "1", "--sampler", "ddim")
    assert proc.returncode == 0, proc.stderr
    assert "sampler ddim, 50 steps (50 network evaluations), uniform grid, eta 0" in proc.stdout
    # the checkpoint has 50 diffusion steps: ddpm without --steps walks them all
    proc = sample(checkpoints["masked"], tmp_path / "p", "--num_samples", "1", "--sampler", "ddpm")
    assert proc.returncode == 0, proc.stderr
    assert "sampler ddpm, 50 steps" in proc.stdout
    # a second-order solver spends --steps network evaluations: Heun takes two per step
    proc = sample(checkpoints["masked"], tmp_path / "h", "--num_samples", "1", "--sampler", "dpmpp_2s", "--steps", "9",
                  "--grid", "karras")
    assert proc.returncode == 0, proc.stderr
    assert "sampler dpmpp_2s, 5 steps (9 network evaluations), karras grid" in proc.stdout


def test_infill_and_generation(checkpoints, tmp_path):
    proc = sample(checkpoints["masked"], tmp_path / "i", "--task", "infill", "--cond_frames", "0,3",
                  "--num_samples", "2", "--sampler", "ddim", "--steps", "10")
    assert proc.returncode == 0, proc.stderr
    f = np.load(run_file(tmp_path / "i", "samples_2x4x16x16x3.npz"))
    assert np.array_equal(f["arr_0"][:, [0, 3]], f["gt"][:, [0, 3]])
    proc = sample(checkpoints["masked"], tmp_path / "g", "--task", "generation", "--num_samples", "2",
                  "--use_ema", "false")
    assert proc.returncode == 0, proc.stderr
    assert "raw weights" in proc.stdout
    f = np.load(run_file(tmp_path / "g", "samples_2x4x16x16x3.npz"))
    assert set(f.files) == {"arr_0"}


@pytest.mark.slow
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not installed (pip install mpich mpi4py)")
def test_one_and_two_ranks_write_the_same_file(checkpoints, tmp_path):
    args = ("--num_samples", "3", "--batch_size", "2", "--sampler", "ddim", "--steps", "10",
            "--seed", "5")
    one = sample(checkpoints["masked"], tmp_path / "one", *args)
    two = sample(checkpoints["masked"], tmp_path / "two", *args, launcher=(MPIEXEC, "-n", "2"))
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a = np.load(run_file(tmp_path / "one", "samples_3x4x16x16x3.npz"))
    b = np.load(run_file(tmp_path / "two", "samples_3x4x16x16x3.npz"))
    for key in ("arr_0", "gt", "obs_mask"):
        assert np.array_equal(a[key], b[key]), key


@pytest.mark.slow
def test_long_rollout_from_the_script(checkpoints, tmp_path):
    proc = sample(checkpoints["masked"], tmp_path, "--num_frames", "9", "--context_frames", "2",
                  "--num_samples", "2", "--sampler", "ddpm", "--steps", "10")
    assert proc.returncode == 0, proc.stderr
    f = np.load(run_file(tmp_path, "samples_2x9x16x16x3.npz"))
    assert f["gt"].shape == (2, 9, 16, 16, 3)
    assert np.array_equal(f["arr_0"][:, 0], f["gt"][:, 0])
    assert f["obs_mask"].tolist() == [[1] + [0] * 8] * 2
    # shorter than the training window (BAIR: trained on 20 frames, evaluated on 16): one short window
    proc = sample(checkpoints["masked"], tmp_path / "short", "--num_frames", "3", "--num_samples", "2",
                  "--steps", "5")
    assert proc.returncode == 0, proc.stderr
    f = np.load(run_file(tmp_path / "short", "samples_2x3x16x16x3.npz"))
    assert np.array_equal(f["arr_0"][:, 0], f["gt"][:, 0]) and f["obs_mask"].tolist() == [[1, 0, 0]] * 2


@pytest.mark.parametrize("args,message", [
    (["--task", "infill", "--cond_frames", "0,4"], "--cond_frames [4] out of range: the model has seq_len 4"),
    (["--num_cond_frames", "4"], "--num_cond_frames"),
    (["--num_frames", "8", "--context_frames", "4"], "--context_frames 4"),
    (["--num_channels", "16"], "do not match the weights"),
    (["--ema_rate", "0.5"], "--ema_rate 0.5"),
])
def test_bad_sampling_flags(checkpoints, tmp_path, args, message):
    proc = sample(checkpoints["masked"], tmp_path, *args)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("*.npz"))


@pytest.mark.slow
def test_guidance_on_a_model_never_trained_unconditionally(checkpoints, tmp_path):
    proc = sample(checkpoints["no_uncond"], tmp_path, "--guidance_scale", "2")
    assert proc.returncode != 0 and "uncondition_rate 0" in proc.stderr
    ok = sample(checkpoints["masked"], tmp_path, "--guidance_scale", "2", "--num_samples", "1",
                "--steps", "5")
    assert ok.returncode == 0, ok.stderr


def test_missing_or_foreign_model_path(tmp_path):
    proc = sample(tmp_path / "nope.pt", tmp_path)
    assert proc.returncode != 0 and "nope.pt" in proc.stderr and "does not exist" in proc.stderr
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"PK\x03\x04 not torch")
    proc = sample(foreign, tmp_path)
    assert proc.returncode != 0 and "foreign.pt" in proc.stderr and "not a readable checkpoint" in proc.stderr
    text = tmp_path / "notes.txt"
    text.write_text("step 1000: looks good\n")
    proc = sample(text, tmp_path)
    assert proc.returncode != 0 and "notes.txt" in proc.stderr and "is not a checkpoint" in proc.stderr
    assert "could execute" not in proc.stderr
    import zipfile
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:  # a zip, but not torch's
        z.writestr("a.txt", "hello")
    proc = sample(tmp_path / "other.zip", tmp_path)
    assert proc.returncode != 0 and "not a readable checkpoint" in proc.stderr
    (tmp_path / "run").mkdir()
    proc = sample(tmp_path / "run", tmp_path)
    assert proc.returncode != 0 and "is a folder; give a checkpoint file" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not installed (pip install mpich mpi4py)")
def test_every_test_video_exactly_once_from_a_folder(tmp_path):
    train_dir, test_dir = tmp_path / "train", tmp_path / "test"
    for d, n in ((train_dir, 3), (test_dir, 5)):
        d.mkdir()
        for i in range(n):
            np.savez(d / f"traj_{i:06d}.npz",
                     video=np.random.default_rng(i + 10 * n).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8))
    proc = run([sys.executable, str(REPO / "scripts" / "video_train.py"), *MICRO_FLAGS, "--data_dir", str(train_dir),
                "--log_dir", str(tmp_path / "run"), "--max_steps", "1", "--diffusion_steps", "50"])
    assert proc.returncode == 0, proc.stderr
    ckpt = tmp_path / "run" / "ckpt_0000001.pt"
    missing = sample(ckpt, tmp_path / "s0")
    assert missing.returncode != 0 and "give --data_dir" in missing.stderr
    proc = sample(ckpt, tmp_path / "s", "--data_dir", str(test_dir), "--num_samples", "0", "--batch_size", "2",
                  "--steps", "5", launcher=(MPIEXEC, "-n", "2"))
    assert proc.returncode == 0, proc.stderr
    f = np.load(run_file(tmp_path / "s", "samples_5x4x16x16x3.npz"))  # 5 test videos over 2 ranks, ragged
    for i in range(5):
        assert np.array_equal(f["gt"][i], np.load(test_dir / f"traj_{i:06d}.npz")["video"][:4])
        assert np.array_equal(f["arr_0"][i, 0], f["gt"][i, 0])
    too_many = sample(ckpt, tmp_path / "s2", "--data_dir", str(test_dir), "--num_samples", "6")
    assert too_many.returncode != 0 and "exceeds the 5 test videos" in too_many.stderr


@pytest.mark.slow
def test_class_conditional_training_with_skipped_files_then_every_window(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for name in ("push_0", "push_1", "grasp_0"):
        np.savez(data / f"{name}.npz", video=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    (data / "push_broken.mp4").write_bytes(b"garbage")
    run_dir = tmp_path / "run"
    proc = run([sys.executable, str(REPO / "scripts" / "video_train.py"), *MICRO_FLAGS, "--data_dir", str(data),
                "--class_cond", "--skip_bad_videos", "--log_dir", str(run_dir), "--max_steps", "1",
                "--diffusion_steps", "50", "--sample_interval", "1", "--sample_videos", "2", "--sample_steps", "2"])
    # the previews read the same folder: the file left out stays out (it used to stop them)
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "samples" / "step_0000001.png").is_file()
    log = (run_dir / "log.txt").read_text()
    assert "push_broken.mp4: cannot be decoded" in log and "1 unusable videos left out" in log
    assert "class-conditional over 2 classes: grasp, push" in log
    from video_diffusion.checkpoints import load_checkpoint

    assert load_checkpoint(run_dir / "ckpt_0000001.pt")["config"]["model"]["num_classes"] == 2
    # every non-overlapping 4-frame window of the 3 good 8-frame videos: 6 samples, labels from the files
    test = tmp_path / "test"
    test.mkdir()
    for name in ("push_0", "push_1", "grasp_0"):
        (test / f"{name}.npz").write_bytes((data / f"{name}.npz").read_bytes())
    proc = sample(run_dir / "ckpt_0000001.pt", tmp_path / "s", "--data_dir", str(test), "--deterministic", "all",
                  "--num_samples", "0", "--steps", "5")
    assert proc.returncode == 0, proc.stderr
    f = np.load(run_file(tmp_path / "s", "samples_6x4x16x16x3.npz"))
    first = np.load(test / "grasp_0.npz")["video"]
    assert np.array_equal(f["gt"][0], first[:4]) and np.array_equal(f["gt"][1], first[4:8])


def test_a_model_trained_on_respaced_steps_samples_on_them_or_on_steps(tmp_path):
    from conftest import micro_config
    from video_diffusion.sampling.options import SampleOptions
    from video_diffusion.sampling.plan import resolve_plan

    def sampling_diffusion(cfg, opts):
        return resolve_plan(cfg, opts).diffusion

    cfg = micro_config(timestep_respacing="10")
    assert sampling_diffusion(cfg, SampleOptions()).num_timesteps == 10
    assert sampling_diffusion(cfg, SampleOptions(steps=5)).num_timesteps == 5
    assert sampling_diffusion(micro_config(), SampleOptions()).num_timesteps == 20  # DPM-Solver++(2M)'s default
    assert sampling_diffusion(micro_config(), SampleOptions(sampler="ddim")).num_timesteps == 50  # DDIM's default
    assert sampling_diffusion(micro_config(), SampleOptions(sampler="dpmpp_2s")).num_timesteps == 10  # 19 evaluations
    assert sampling_diffusion(micro_config(), SampleOptions(sampler="ddpm")).num_timesteps == 100  # all steps
    with pytest.raises(ValueError, match="--steps"):
        sampling_diffusion(micro_config(), SampleOptions(steps=-3))
