"""
The GPU path in one call: environment, the CUDA tests, bair64 training throughput (bf16, with
and without torch.compile), BAIR-shape sampling time, and a short quality run of the CPU
recipe on the GPU scored against both baselines and the perfect model.

    python scripts/device_check.py --out_dir device_check            # on a GPU machine, ~8 minutes
    python scripts/device_check.py --smoke --out_dir /tmp/check      # anywhere, seconds (CI runs this)

Everything is written under --out_dir, at most 6 files: device_check.json (every figure),
quality_grid.png (held-out 2 -> 6 predictions of the quality run: ground truth above the
model's, given frames outlined in red), cuda_tests.txt, benchmark.txt, quality_train.log.
A step that fails is recorded with its error and the check goes on; the exit status is 1
if any step failed. Needs no network: the FVD weights are not used here.
"""

import argparse
import json
import os
import re
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


def peak_tflops_of(name: str):
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def environment() -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
           "gpu": None, "gpu_memory_gb": None, "bf16": None, "peak_bf16_tflops": None,
           "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_count=torch.cuda.device_count(), gpu_memory_gb=props.total_memory / 2 ** 30,
                   bf16=torch.cuda.is_bf16_supported(), peak_bf16_tflops=peak_tflops_of(props.name))
    return env


def run(cmd, log, timeout, env=None):
    """Run a command, append its output to the file ``log``; (returncode, output)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    out = proc.stdout + proc.stderr
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n{out}\n[exit {proc.returncode}, {time.perf_counter() - start:.1f} s]\n\n")
    return proc.returncode, out


def cuda_tests(out_dir: Path, timeout: int) -> dict:
    code, out = run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "tests/test_cuda.py"],
                    out_dir / "cuda_tests.txt", timeout)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", out.splitlines()[-1] if out else "")}
    return {"exit": code, **counts}


def benchmark(out_dir: Path, smoke: bool, batch_sizes, compile_modes, peak, timeout: int) -> list:
    """bair64 bf16 training at the largest batch that fits (tiny --smoke on a CPU), per compile mode."""
    rows = []
    for compiled in compile_modes:
        for batch in batch_sizes:
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                cmd = [sys.executable, "scripts/benchmark.py", "--json", f.name, "--batch_size", str(batch),
                       "--compile", str(compiled).lower(), "--log_dir", tempfile.mkdtemp()]
                cmd += (["--preset", "tiny", "--smoke"] if smoke else
                        ["--preset", "bair64", "--precision", "bf16", "--sampling_batch", "16", "--steps", "10",
                         "--warmup", "5" if compiled else "3"])
                if peak:
                    cmd += ["--peak_tflops", str(peak)]
                code, out = run(cmd, out_dir / "benchmark.txt", timeout)
                if code == 0:
                    r = json.loads(Path(f.name).read_text())
                    rows.append({"compile": compiled, "batch_size": batch, "videos_per_s": r["train_videos_per_s"],
                                 "achieved_tflops": r["achieved_tflops"], "mfu": r["mfu"],
                                 "peak_mem_gb": r["train_peak_mem_mb"] / 1024,
                                 "sample_s_per_video": r["sample_s_per_video"], "sampler": r["benchmark"]["sampler"],
                                 "sample_batch": r["benchmark"]["sample_batch"]})
                    break
                if "out of memory" not in out.lower():
                    rows.append({"compile": compiled, "batch_size": batch, "error": out.strip().splitlines()[-1]})
                    break
    return rows


def quality_run(out_dir: Path, smoke: bool, minutes: float, batch: int, num_videos: int) -> dict:
    """
    The CPU recipe (--preset tiny) trained on this device for ``minutes`` (a stop signal then
    saves and ends it, as a cluster's preemption would), then scored on held-out videos.
    """
    run_dir = Path(tempfile.mkdtemp()) / "run"
    cmd = [sys.executable, "scripts/video_train.py", "--preset", "tiny", "--log_dir", str(run_dir),
           "--sample_interval", "0", "--log_interval", "10" if smoke else "100", "--save_interval", "100000"]
    cmd += ["--max_steps", "3", "--batch_size", "2", "--num_workers", "0"] if smoke else \
        ["--max_steps", "1000000", "--batch_size", str(batch), "--lr_anneal_steps", "0"]
    start = time.perf_counter()
    with open(out_dir / "quality_train.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            proc.wait(timeout=None if smoke else minutes * 60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the loop saves a checkpoint and exits 75
            proc.wait(timeout=300)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 75):
        raise RuntimeError(f"the quality run's training exited {proc.returncode} (see quality_train.log)")

    from video_diffusion import distributed
    from video_diffusion.files import write_image
    from video_diffusion.checkpoints import find_latest, load_checkpoint
    from video_diffusion.evaluation.curve import curve_tasks, references
    from video_diffusion.evaluation.quality import evaluate
    from video_diffusion.sampling.loading import load_for_sampling
    from video_diffusion.sampling.options import SampleOptions
    from video_diffusion.sampling.plan import resolve_plan

    ckpt = find_latest(run_dir)
    step = int(load_checkpoint(ckpt)["step"])
    ctx = distributed.DistContext(0, 1, 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"), "single")
    cfg, model, _ = load_for_sampling(ckpt, device=ctx.device)
    tasks = [t for t in curve_tasks(cfg.model.seq_len) if t["key"] in ("pred2", "infill")]
    refs = references(cfg, num_videos, device=ctx.device)
    result = {"train_seconds": seconds, "steps": step, "batch_size": cfg.train.batch_size,
              "videos_seen": step * cfg.train.batch_size, "num_videos": num_videos, "tasks": {}}
    for task in tasks:
        fields = {k: v for k, v in task.items() if k not in ("key", "label")}
        opts = SampleOptions(**fields, num_samples=num_videos, **({"steps": 4} if smoke else {}))
        out = evaluate(cfg, model, resolve_plan(cfg, opts), ctx, grid_videos=8)
        m = out["metrics"]
        result["tasks"][task["key"]] = {"label": task["label"], "model": {"psnr": m["psnr_mean"], "ssim": m["ssim_mean"]},
                                        **{k: refs[task["key"]][k] for k in ("copy_last_given", "black", "perfect")
                                           if k in refs[task["key"]]}}
        if task["key"] == "pred2" and out["grid"] is not None:
            write_image(out_dir / "quality_grid.png", out["grid"])
    return result


def summary(report: dict) -> str:
    e = report["environment"]
    lines = [f"device: {e['gpu'] or 'cpu'} ({e['gpu_memory_gb'] or 0:.0f} GB), torch {e['torch']}, "
             f"CUDA {e['cuda']}, bf16 {e['bf16']}, peak {e['peak_bf16_tflops']} TFLOP/s"]
    t = report.get("cuda_tests", {})
    lines.append(f"cuda tests: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, {t.get('skipped', 0)} skipped")
    for r in report.get("benchmark", []):
        if "error" in r:
            lines.append(f"train batch {r['batch_size']} compile {r['compile']}: FAILED {r['error']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        lines.append(f"train batch {r['batch_size']:>3d} compile {str(r['compile']):5s}: {r['videos_per_s']:8.1f} videos/s "
                     f"{r['achieved_tflops']:7.1f} TFLOP/s  MFU {mfu}  peak {r['peak_mem_gb']:.1f} GB | "
                     f"sampling {r['sample_s_per_video']:.3f} s/video ({r['sampler']}, batch {r['sample_batch']})")
    q = report.get("quality")
    if q:
        lines.append(f"quality run: {q['steps']} steps x {q['batch_size']} = {q['videos_seen']:,} videos in "
                     f"{q['train_seconds'] / 60:.1f} min; {q['num_videos']} held-out videos (PSNR dB / SSIM)")
        for key, row in q["tasks"].items():
            cells = "  ".join(f"{name} {row[name]['psnr']:.2f}/{row[name]['ssim']:.3f}"
                              for name in ("model", "copy_last_given", "black", "perfect") if name in row)
            lines.append(f"  {row['label']:12s} {cells}")
    for step, error in report.get("failures", {}).items():
        lines.append(f"FAILED {step}: {error}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--out_dir", required=True, help="where the JSON, the picture and the logs go")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps (seconds; for CI, any device)")
    p.add_argument("--minutes", type=float, default=4.0, help="training time of the quality run (default: 4)")
    p.add_argument("--quality_batch", type=int, default=64, help="batch of the quality run (default: 64)")
    p.add_argument("--batch_sizes", default="64,32,16,8", help="bair64 batches tried, largest first (default: 64,32,16,8)")
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU (default: from the GPU name)")
    p.add_argument("--skip", default="", help="steps to leave out, e.g. 'tests,compile' (tests, benchmark, compile, quality)")
    args = p.parse_args(argv)
    from video_diffusion.files import check_output_folder

    out_dir = Path(args.out_dir)
    try:
        check_output_folder(out_dir, "--out_dir")
    except ValueError as e:
        p.error(str(e))
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch_sizes must be comma-separated integers, got {args.batch_sizes!r}")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - {"tests", "benchmark", "compile", "quality"}:
        p.error(f"--skip: unknown steps {sorted(skip - {'tests', 'benchmark', 'compile', 'quality'})}")
    if args.minutes <= 0 or args.quality_batch < 1 or not batch_sizes:
        p.error("--minutes must be > 0, --quality_batch >= 1 and --batch_sizes non-empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("cuda_tests.txt", "benchmark.txt"):
        (out_dir / name).unlink(missing_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    report = {"smoke": args.smoke, "environment": environment(), "failures": {}}
    peak = args.peak_tflops or report["environment"]["peak_bf16_tflops"]
    print(summary({"environment": report["environment"]}).splitlines()[0], flush=True)
    compile_modes = [False] if args.smoke or "compile" in skip else [False, True]
    steps = [("cuda_tests", "tests", lambda: cuda_tests(out_dir, 300)),
             ("benchmark", "benchmark", lambda: benchmark(out_dir, args.smoke, [2] if args.smoke else batch_sizes,
                                                          compile_modes, peak, 300)),
             ("quality", "quality", lambda: quality_run(out_dir, args.smoke, args.minutes, args.quality_batch,
                                                        4 if args.smoke else 32))]
    for key, name, step in steps:
        if name in skip:
            continue
        start = time.perf_counter()
        try:
            report[key] = step()
        except Exception as e:  # the check goes on: one broken step must not hide the others' figures
            report["failures"][key] = f"{type(e).__name__}: {e}"
        report.setdefault("seconds", {})[key] = time.perf_counter() - start
        print(f"[{key} done in {report['seconds'][key]:.0f} s]", flush=True)
        (out_dir / "device_check.json").write_text(json.dumps(report, indent=1))
    if report.get("cuda_tests", {}).get("failed") or report.get("cuda_tests", {}).get("error"):
        report["failures"]["cuda_tests"] = "some CUDA tests failed (see cuda_tests.txt)"
    (out_dir / "device_check.json").write_text(json.dumps(report, indent=1))
    print(summary(report), flush=True)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
