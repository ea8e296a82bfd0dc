"""The sampler table: every sampler over the one denoiser seam, on exact denoisers with known answers."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, micro_config, script_env
from video_diffusion.build import create_diffusion
from video_diffusion.diffusion.masks import frames_mask, prediction_mask
from video_diffusion.diffusion.respace import karras_timesteps, logsnr_timesteps
from video_diffusion.sampling.generate import sample
from video_diffusion.sampling.samplers import GRIDS, SAMPLERS

SHAPE = (2, 3, 6, 8, 8)


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(n)]


def respacing_for(sampler, evaluations, grid="uniform"):
    steps = SAMPLERS[sampler].steps_for(evaluations)
    return str(steps) if grid == "uniform" else f"{grid}{steps}"


class GivenFrameOracle:
    """
    Knows that the clean video repeats the given frame in every frame, and reads that frame
    from its input (so it sees exactly what the sampler pasted there). Outputs x_0.
    """

    def __call__(self, x, t, obs_mask=None):
        first = obs_mask.float().argmax(dim=1)  # the given frame of each video
        frame = x[torch.arange(x.shape[0]), :, first]  # [N, C, H, W] read from the input
        return frame[:, :, None].expand_as(x).clone()


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("grid", GRIDS)
def test_the_given_frames_reach_the_network_at_every_step(sampler, grid):
    # Without the in-loop paste the oracle would read noise at the given frame and the
    # generated frames would be noise: the final paste alone cannot hide it.
    cfg = micro_config(predict_xstart=True, diffusion_steps=100, timestep_respacing=respacing_for(sampler, 8, grid))
    x_known = torch.rand(SHAPE) * 1.6 - 0.8
    mask = frames_mask(2, 6, [2])
    out = sample(create_diffusion(cfg), GivenFrameOracle(), SHAPE, gens(2), obs_mask=mask, x_known=x_known,
                 sampler=sampler)
    want = x_known[:, :, 2:3].expand_as(out)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_one_network_evaluation_returns_the_denoisers_answer(sampler):
    # a one-step process has no t = 1 to clip the posterior variance to (it used to fail building)
    cfg = micro_config(predict_xstart=True, diffusion_steps=100, timestep_respacing=respacing_for(sampler, 1))
    diffusion = create_diffusion(cfg)
    assert diffusion.num_timesteps == 1 and np.isfinite(diffusion.posterior_log_variance_clipped).all()
    x_known = torch.rand(SHAPE) * 1.6 - 0.8
    out = sample(diffusion, GivenFrameOracle(), SHAPE, gens(2), obs_mask=prediction_mask(2, 6, 1), x_known=x_known,
                 sampler=sampler)
    torch.testing.assert_close(out, x_known[:, :, :1].expand_as(out), atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_the_network_receives_the_given_data_at_every_call(sampler):
    cfg = micro_config(diffusion_steps=100, timestep_respacing=respacing_for(sampler, 6))
    x_known = torch.rand(SHAPE) * 2 - 1
    mask = prediction_mask(2, 6, 2)
    calls = []

    def recording(x, t, obs_mask=None):
        assert torch.equal(obs_mask, mask)
        assert torch.equal(x[:, :, :2], x_known[:, :, :2]), "the given frames differ from the data"
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    sample(create_diffusion(cfg), recording, SHAPE, gens(2), obs_mask=mask, x_known=x_known, sampler=sampler)
    assert len(calls) == SAMPLERS[sampler].evaluations(create_diffusion(cfg).num_timesteps)
    assert calls[0] == 99  # the network sees base-process timesteps, from the noisiest


def gaussian_denoiser(mu, s, base_abar):
    """The exact x_0 predictor of Gaussian data N(mu, s^2): E[x_0 | x_t] in closed form."""
    def model(x, t, obs_mask=None):
        abar = base_abar[t].reshape(-1, 1, 1, 1, 1)
        gain = abar.sqrt() * s ** 2 / (abar * s ** 2 + 1 - abar)
        return mu + gain * (x - abar.sqrt() * mu)
    return model


def test_solvers_agree_with_ddim_as_steps_grow_and_the_second_order_ones_converge_faster():
    base = micro_config(predict_xstart=True, diffusion_steps=1000, noise_schedule="cosine")
    abar = torch.tensor(create_diffusion(base).alphas_cumprod, dtype=torch.float32)
    torch.manual_seed(0)
    mu, s = torch.rand(SHAPE) * 0.4 - 0.2, 0.3
    model = gaussian_denoiser(mu, s, abar)

    def run(sampler, respacing):
        cfg = micro_config(predict_xstart=True, diffusion_steps=1000, noise_schedule="cosine",
                           timestep_respacing=respacing)
        return sample(create_diffusion(cfg), model, SHAPE, gens(2), sampler=sampler, clip_denoised=False)

    reference = run("dpmpp_2s", "")  # every step, second order: the probability-flow ODE's solution
    err = {name: [float((run(name, r) - reference).abs().max()) for r in grids]
           for name, grids in (("ddim", ["20", "100", "500"]), ("dpmpp_2m", ["20", "100", "500"]),
                               ("dpmpp_2s", ["11", "51", "251"]))}
    for name, e in err.items():
        assert e[0] > e[1] > e[2], (name, e)  # every solver approaches the same limit
    assert err["ddim"][2] < 0.01 and err["dpmpp_2m"][2] < 1e-3 and err["dpmpp_2s"][2] < 1e-3, err
    # from about 100 to about 500 evaluations: first order gains ~5x, second order ~25x
    assert err["ddim"][1] / err["ddim"][2] < 8, err
    assert err["dpmpp_2m"][1] / err["dpmpp_2m"][2] > 15 and err["dpmpp_2s"][1] / err["dpmpp_2s"][2] > 15, err


def test_karras_grid():
    abar = create_diffusion(micro_config(diffusion_steps=1000)).alphas_cumprod
    for count in (1, 5, 20, 100, 1000):
        kept = sorted(karras_timesteps(abar, count))
        assert len(kept) == count and kept[-1] == 999 and (count == 1 or kept[0] == 0)
    kept = sorted(karras_timesteps(abar, 20))
    gaps = np.diff(kept)
    assert gaps[0] < gaps[-1]  # dense at low noise, sparse at high noise


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_logsnr_grid(schedule):
    abar = create_diffusion(micro_config(diffusion_steps=1000, noise_schedule=schedule)).alphas_cumprod
    lam = 0.5 * np.log(abar / (1 - abar))
    for count in (1, 2, 5, 20, 100, 1000):
        kept = sorted(logsnr_timesteps(abar, count))
        assert len(kept) == count and kept[-1] == 999 and (count == 1 or kept[0] == 0)
    # Below the start (always the last timestep) the steps are even in log-SNR, from lambda_0 up to
    # the mirror -lambda_0 or the schedule's own end: no steps spent beyond it on pure noise.
    kept = sorted(logsnr_timesteps(abar, 20))
    top = max(lam[-1], -lam[0])
    assert lam[kept[-2]] > top
    h = np.diff(-lam[kept[:-1]])
    assert np.allclose(h, (lam[0] - top) / 19, rtol=0.25), h
    if schedule == "cosine":  # the clipped last beta: lambda(999) ~ -9.9, far below -lambda_0 ~ -5
        assert lam[-1] < -9 and -5.2 < top < -4.9
        assert lam[kept[-2]] < top + (lam[0] - top) / 19 + 0.2  # the first step lands just above the cap


def test_the_default_grid_is_the_samplers_own():
    from video_diffusion.sampling.options import SampleOptions
    from video_diffusion.sampling.plan import grid_of, resolve_plan

    cfg = micro_config(diffusion_steps=1000)
    abar = create_diffusion(cfg).alphas_cumprod
    default = SampleOptions()
    assert (default.sampler, grid_of(default)) == ("dpmpp_2m", "logsnr")
    assert resolve_plan(cfg, default).grid.timesteps == tuple(sorted(logsnr_timesteps(abar, 20)))
    ddim = SampleOptions(sampler="ddim")  # DDIM keeps its own strides, 0, 20, ..., 980
    assert grid_of(ddim) == "uniform" and resolve_plan(cfg, ddim).grid.timesteps == tuple(range(0, 1000, 20))
    chosen = SampleOptions(grid="karras", steps=10)  # an explicit --grid wins
    assert resolve_plan(cfg, chosen).grid.timesteps == tuple(sorted(karras_timesteps(abar, 10)))


def choices_of(script):
    text = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"], env=script_env(),
                          capture_output=True, text=True, timeout=120).stdout
    flat = " ".join(text.split())
    start = flat.index("--sampler {") + len("--sampler {")
    return tuple(flat[start:flat.index("}", start)].split(","))


@pytest.mark.parametrize("script", ["video_sample.py", "evaluate.py", "eval_bair.py", "benchmark.py"])
def test_every_script_takes_its_sampler_choices_from_the_table(script):
    assert choices_of(script) == tuple(SAMPLERS)


@pytest.mark.slow
def test_the_comparison_script_writes_its_table(tmp_path):
    from conftest import loop_for

    cfg = micro_config(tmp_path, max_steps=1, save_interval=1, seq_len=4)
    loop_for(cfg).run()
    ckpt = tmp_path / "run" / "ckpt_0000001.pt"
    args = [sys.executable, str(REPO / "scripts" / "compare_samplers.py"), "--model_path", str(ckpt),
            "--num_cond_frames", "1", "--num_samples", "2", "--batch_size", "2", "--samplers", "ddim,dpmpp_2m",
            "--grids", "uniform", "--evaluations", "2", "--baseline", "ddim:4", "--seeds", "0,1",
            "--reference_evaluations", "6", "--out_dir", str(tmp_path / "out"), "--fvd_videos", "2",
            "--fvd_frames", "10"]
    proc = subprocess.run(args, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json

    rows = json.loads((tmp_path / "out" / "samplers.json").read_text())["rows"]
    assert [(r["sampler"], r["evaluations"]) for r in rows] == [("ddim", 2), ("ddim", 4), ("dpmpp_2m", 2)]
    assert all(len(r["per_seed"]["psnr"]) == 2 for r in rows)
    assert all(len(r["per_seed"]["fvd"]) == 2 and r["fvd"] > 0 for r in rows)  # generation's FVD per seed
    table = (tmp_path / "out" / "samplers.md").read_text()
    assert table.count("\n") == 5 and "FVD (2 generated x 10 frames)" in table  # header, rule, three rows

    # A rerun into the same folder keeps the rows measured (a marked value survives) and measures only new ones.
    data = json.loads((tmp_path / "out" / "samplers.json").read_text())
    data["rows"][2]["psnr"] = -123.0  # dpmpp_2m, 2
    (tmp_path / "out" / "samplers.json").write_text(json.dumps(data))
    args[args.index("--evaluations") + 1] = "2,3"
    proc = subprocess.run(args, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("measured earlier") == 3
    rows = json.loads((tmp_path / "out" / "samplers.json").read_text())["rows"]
    assert [(r["sampler"], r["evaluations"]) for r in rows] == [("ddim", 2), ("ddim", 3), ("ddim", 4),
                                                                ("dpmpp_2m", 2), ("dpmpp_2m", 3)]
    assert rows[3]["psnr"] == -123.0 and rows[1]["psnr"] > 0
    # Another grid into the same folder adds its rows; the earlier ones stay.
    args[args.index("--grids") + 1] = "karras"
    args[args.index("--samplers") + 1] = "dpmpp_2m"
    args[args.index("--evaluations") + 1] = "3"
    args[args.index("--baseline") + 1] = ""
    proc = subprocess.run(args, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "out" / "samplers.json").read_text())["rows"]
    assert [(r["sampler"], r["grid"], r["evaluations"]) for r in rows][3:] == [
        ("dpmpp_2m", "uniform", 2), ("dpmpp_2m", "uniform", 3), ("dpmpp_2m", "karras", 3)]
    assert len(rows) == 6 and (tmp_path / "out" / "samplers.md").read_text().count("\n") == 8
    # Other settings in the same folder: refused, naming what differs; nothing overwritten.
    args[args.index("--seeds") + 1] = "0,5"
    proc = subprocess.run(args, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "seeds" in proc.stderr and "--out_dir" in proc.stderr, proc.stderr
    assert json.loads((tmp_path / "out" / "samplers.json").read_text())["rows"] == rows
    # Ancestral DDPM at a budget and on every step (0); a negative budget is refused.
    cfg_steps = micro_config(tmp_path).diffusion.diffusion_steps
    args[args.index("--samplers") + 1] = "ddpm"
    args[args.index("--seeds") + 1] = "0,1"
    args[args.index("--evaluations") + 1] = "0,2"
    args[args.index("--grids") + 1] = "uniform"
    args[args.index("--out_dir") + 1] = str(tmp_path / "ddpm")
    args[args.index("--fvd_videos") + 1] = "0"
    proc = subprocess.run(args, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "ddpm" / "samplers.json").read_text())["rows"]
    assert [(r["sampler"], r["evaluations"]) for r in rows] == [("ddpm", 2), ("ddpm", cfg_steps)]
    args[args.index("--evaluations") + 1] = "-1"
    proc = subprocess.run(args, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--evaluations" in proc.stderr, proc.stderr
