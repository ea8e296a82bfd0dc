"""
What the project does, through its command line only: trains two micro models for 20 steps
on a folder of videos it writes (so that a change of the embedded generator's videos does
not count as a change of behaviour) and samples them with every sampler on every task (plus guidance, replacement with
resampling and a rolled-out video), writing the losses, the weights and the sample files
into OUT. ``test_unchanged_behaviour.py`` runs it on the code before the restructuring
(``git archive``) and on today's, and compares the results bit for bit.

    python tests/behaviour_probe.py ROOT OUT     # ROOT: the checkout whose scripts/ run

It samples the raw weights: the EMA's warm-up (2026-12-05) changed the averages on purpose.
Only the scripts' flags drive it: those are the surface that stays. The sample files hold
uint8 videos, which would hide a change below a rounding step, so the probe also records the
float videos the generation code converts to uint8 (``to_uint8``, which lives in
``sample_util`` before the restructuring and in ``sampling.outputs`` after it) and writes
them beside each sample file as floats.npz.

Attention runs on scaled-dot-product attention's math path in both trees: which fused kernel
SDPA picks depends on the memory layout of q, k and v (the attention block makes them
contiguous since 2026-12-05, so that the fused kernels run and no L x L matrix is kept), and
the kernels round differently (3e-7 on a sampler's floats). The probe compares behaviour, not
the kernel choice.
"""

import contextlib
import csv
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np

MICRO = ["--image_size", "16", "--seq_len", "4", "--num_channels", "8", "--num_res_blocks", "1",
         "--channel_mult", "1,2", "--attention_resolutions", "8", "--num_heads", "2", "--max_num_mask_frames", "2",
         "--diffusion_steps", "100", "--batch_size", "2", "--num_workers", "0", "--log_interval", "1",
         "--max_steps", "20", "--save_interval", "20", "--sample_interval", "0", "--ema_rate", "0.9"]
MODELS = {
    "direct": [],
    # the CPU recipe's options: channel norm, the nearest given frame, x_0 on cosine
    "recipe": ["--norm", "channel", "--given_frame_input", "true", "--predict_xstart", "true",
               "--noise_schedule", "cosine"],
}
TASKS = {"prediction": ["--task", "prediction", "--num_cond_frames", "1"],
         "infill": ["--task", "infill", "--cond_frames", "0,3"],
         "generation": ["--task", "generation"]}
SAMPLERS = {"ddpm": ["--sampler", "ddpm"], "ddim": ["--sampler", "ddim", "--steps", "10", "--eta", "0.5"],
            "dpmpp_2m": ["--sampler", "dpmpp_2m", "--steps", "8"], "dpmpp_2s": ["--sampler", "dpmpp_2s"],
            "karras": ["--sampler", "dpmpp_2m", "--steps", "6", "--grid", "karras"]}
EXTRA = {"guidance": TASKS["prediction"] + ["--sampler", "ddim", "--steps", "10", "--guidance_scale", "2"],
         "replacement": TASKS["infill"] + ["--sampler", "ddpm", "--steps", "20", "--conditioning", "replacement",
                                           "--resample_steps", "2"],
         "rollout": TASKS["prediction"] + ["--steps", "6", "--num_frames", "7", "--context_frames", "2"],
         "per_video": TASKS["prediction"] + ["--steps", "6", "--samples_per_video", "2", "--batch_size", "3"]}


def script(root: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"probe_{name}", root / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record_float_videos() -> list:
    """Every float video batch handed to the generation code's ``to_uint8``, in order."""
    import importlib

    seen = []
    for name in ("video_diffusion.sampling.generate", "video_diffusion.sample_util"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "to_uint8"):
            convert = module.to_uint8

            def recording(videos, convert=convert):
                seen.append(videos.detach().cpu().numpy().copy())
                return convert(videos)

            module.to_uint8 = recording
            return seen
    raise RuntimeError("no to_uint8 in the generation code: update the probe for the new layout")


def write_videos(folder: Path, count: int, seed: int) -> None:
    """``count`` videos of a coloured square moving by whole pixels, as npz files: data of the
    probe's own, so that both trees read the same videos whatever their embedded generator draws."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        video = np.zeros((8, 16, 16, 3), dtype=np.uint8)
        y, x = rng.integers(5, 7, size=2)  # never above or left of the frame; cut at its far side
        vy, vx = rng.integers(-1, 2, size=2)
        colour = rng.integers(100, 256, size=3)
        for f in range(8):
            video[f, y + vy * f + 2:y + vy * f + 6, x + vx * f + 2:x + vx * f + 6] = colour
        np.savez(folder / f"video_{i:03d}.npz", video=video)


def main(root: Path, out: Path) -> None:
    sys.path.insert(0, str(root))
    import torch

    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.set_num_threads(1)
    with sdpa_kernel(SDPBackend.MATH):
        _run(root, out)


def _run(root: Path, out: Path) -> None:
    train, sample = script(root, "video_train"), script(root, "video_sample")
    floats = record_float_videos()
    summary = {}
    write_videos(out / "data" / "train", 24, seed=0)
    write_videos(out / "data" / "test", 4, seed=1)
    for model, flags in MODELS.items():
        run = out / model
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train.main(MICRO + flags + ["--log_dir", str(run), "--data_dir", str(out / "data" / "train")])
        with open(run / "progress.csv", newline="") as f:
            summary[model] = [row["loss"] for row in csv.DictReader(f)]
        ckpt = run / "ckpt_0000020.pt"
        jobs = {f"{task}-{s}": TASKS[task] + SAMPLERS[s] for task in TASKS for s in SAMPLERS}
        jobs.update(EXTRA)
        for job, job_flags in jobs.items():
            floats.clear()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                sample.main(["--model_path", str(ckpt), "--out_dir", str(out / "samples" / model / job),
                             "--num_samples", "3", "--batch_size", "2", "--seed", "7", "--use_ema", "false",
                             "--data_dir", str(out / "data" / "test")] + job_flags)
            np.savez(out / "samples" / model / job / "floats.npz", *floats)
    (out / "losses.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
