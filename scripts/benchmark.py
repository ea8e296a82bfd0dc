"""
Training and sampling speed, memory and FLOPs for a configuration.

    python scripts/benchmark.py --preset tiny
    python scripts/benchmark.py --preset bair64 --precision bf16 --peak_tflops 989 --json bench.json
    python scripts/benchmark.py --image_size 32 --seq_len 8 --num_channels 32 --num_res_blocks 1 \\
        --batch_size 2 --attention_resolutions 16,8      # RaMViD's tiny configuration
    python scripts/benchmark.py --preset tiny --smoke    # seconds, for CI

Training: median seconds per optimizer step over --steps timed steps after --warmup, on a
fixed batch held in memory (data loading is measured by benchmark_data.py). Peak memory:
max RSS of the process on CPU, max allocated on GPU; memory per video: the growth of the
peak from half the batch to the batch, per video (the activations one more video costs).
FLOPs per step: forward and backward of the network on one video, counted by
torch.utils.flop_counter on the uncompiled network, times the batch (so --compile and a
batch at the edge of memory are counted the same way). --probe_batch first finds the
largest batch that fits (doubling from --batch_size until out of memory, one step each) and
benchmarks that. Sampling: seconds per video for
--sampling_batch videos predicted from one frame with --sampler and --sampling_steps network
evaluations, through the generation code of video_sample.py, in the run's --precision.

--profile adds where the step's time and memory go: the activation memory one more video
keeps, counted by layer kind on fake tensors (training/profiling.py; a count of what autograd
saves, beside the measured peak), and the top operators by self time over one profiled step
(torch.profiler; on a GPU the CUDA kernel time).
"""

import argparse
import gc
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from video_diffusion import distributed
from video_diffusion.config import add_config_flags, apply_overrides, config_from_args, validate
from video_diffusion.data import create_dataset
from video_diffusion.training.logger import RunLogger
from video_diffusion.sampling.generate import generate
from video_diffusion.sampling.options import SampleOptions
from video_diffusion.sampling.plan import resolve_plan
from video_diffusion.sampling.samplers import SAMPLERS
from video_diffusion.training.profiling import activation_bytes_per_video
from video_diffusion.training.setup import build_train_loop


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def build(cfg, ctx):
    """The training loop of ``cfg`` (driven by hand) and one fixed batch of its videos."""
    logger = RunLogger(cfg.train.log_dir, enabled=False)
    data = create_dataset(cfg)
    batch = {"video": torch.stack([data[i % len(data)]["video"] for i in range(cfg.train.batch_size)])}
    loop = build_train_loop(cfg, ctx, logger, resume=None, dataset=data)
    loop.data = iter(())  # the loop is driven with the fixed batch
    return loop, batch


def count_flops(loop, batch) -> float:
    """
    FLOPs of one training step's forward and backward: counted on one video through the
    uncompiled network (outside torch.compile, and small enough to fit wherever the batch
    does), times the batch size. Convolutions, matrix products and attention scale linearly
    with the batch, so this equals a count over the whole batch.
    """
    x = batch["video"][:1].to(loop.ctx.device)
    t = torch.full((1,), loop.diffusion.num_timesteps // 2, device=x.device, dtype=torch.long)
    mask = torch.zeros(1, x.shape[2], device=x.device)
    mask[:, 0] = 1
    # attention through the math kernel: the counter has no formula for CPU's flash kernel (it would
    # count 0), and the math kernel's matrix products count the same FLOPs as the GPU's fused kernels
    with FlopCounterMode(display=False) as counter, torch.autocast(**loop.autocast), sdpa_kernel(SDPBackend.MATH):
        loss = loop.diffusion.training_losses(loop.model, x, t, obs_mask=mask)["loss"].mean()
        loss.backward()
    loop.opt.zero_grad(set_to_none=True)
    return counter.get_total_flops() * batch["video"].shape[0]


def profile_step(loop, batch, rows: int = 12):
    """
    Where one training step's time and activation memory go. :return: {"activation_mb_per_video":
    {layer kind: MB}, "top_ops": [{name, self_ms, calls, share}]}, the ops by self time (CUDA time on a
    GPU, CPU time otherwise) over one step run under torch.profiler after the timed ones.
    """
    model = loop.model
    cfg = loop.cfg
    shape = (batch["video"].shape[1],) + tuple(batch["video"].shape[3:])
    # the kernel head picks each chain step's frames from the mask (shapes that depend on data), which
    # fake tensors cannot follow: a network with it is counted on real ones (the same count, more time)
    per_video = activation_bytes_per_video(model, shape, cfg.model.seq_len, loop.autocast,
                                           fake=getattr(model, "kernel_head", None) is None)
    device = loop.ctx.device
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        loop.run_step(batch)
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: -getattr(e, key))
    top = [{"name": e.key, "self_ms": getattr(e, key) / 1e3, "calls": e.count, "share": getattr(e, key) / total}
           for e in events[:rows]]
    return {"activation_mb_per_video": {k: v / 2 ** 20 for k, v in per_video.items()}, "top_ops": top,
            "time_source": "CUDA kernels" if device.type == "cuda" else "CPU"}


def format_profile(prof: dict) -> str:
    mem = prof["activation_mb_per_video"]
    total = sum(mem.values())
    lines = [f"activation memory one more video keeps (counted): {total:.0f} MB"]
    lines += [f"  {k:<44} {v:9.1f} MB  {v / total:6.1%}" for k, v in mem.items() if v >= 0.001 * total]
    lines.append(f"top operators by self {prof['time_source']} time, one step:")
    lines += [f"  {r['name'][:44]:<44} {r['self_ms']:9.1f} ms  {r['share']:6.1%}  x{r['calls']}" for r in prof["top_ops"]]
    return "\n".join(lines)


def probe_batch(cfg, ctx, largest: int):
    """
    The largest batch, doubling from --batch_size up to ``largest``, for which one training
    step fits in memory. :return: (cfg at that batch or None if none fits, one row per batch tried).
    """
    rows, fits = [], None
    batch_size = cfg.train.batch_size
    while batch_size <= largest:
        trial = apply_overrides(cfg, {"batch_size": batch_size})
        try:
            loop, batch = build(trial, ctx)
            reset_peak(ctx.device)
            loop.run_step(batch)
            sync(ctx.device)
            rows.append({"batch_size": batch_size, "fits": True, "peak_mem_mb": peak_memory_mb(ctx.device)})
            fits = trial
        except torch.OutOfMemoryError as e:
            rows.append({"batch_size": batch_size, "fits": False, "error": f"out of memory: {str(e).splitlines()[0]}"})
            break
        finally:
            loop = batch = None
            gc.collect()  # the failed step's tensors, before the allocator's cache is emptied
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
        batch_size *= 2
    return fits, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    add_config_flags(p)
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    p.add_argument("--sampler", default=SampleOptions.sampler, choices=tuple(SAMPLERS),
                   help=f"sampler of the sampling measurement (default: {SampleOptions.sampler})")
    p.add_argument("--sampling_steps", type=int, default=-1,
                   help="network evaluations per video of the sampling measurement (-1 = the sampler's default)")
    p.add_argument("--sampling_batch", type=int, default=2, help="videos sampled together")
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU, e.g. 989 (H100 bf16 dense)")
    p.add_argument("--probe_batch", type=int, default=0, metavar="MAX",
                   help="find the largest batch that fits, doubling from --batch_size up to MAX (0 = off)")
    p.add_argument("--profile", action="store_true",
                   help="also count activation memory by layer kind and list the top operators by time")
    p.add_argument("--smoke", action="store_true", help="1 warm-up, 2 timed steps, 2 sampling steps (for CI)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup, args.sampling_steps = 2, 1, 2
    try:
        cfg = config_from_args(args)
        cfg = apply_overrides(cfg, {"log_dir": cfg.train.log_dir or "runs/benchmark", "num_workers": 0})
        validate(cfg)
        if args.steps < 1 or args.warmup < 0 or args.sampling_steps < -1 or args.sampling_batch < 1:
            raise ValueError("--steps and --sampling_batch must be >= 1, --sampling_steps >= -1, --warmup >= 0")
    except ValueError as e:
        p.error(str(e))

    ctx = distributed.setup_dist()
    device = ctx.device
    probed = []
    if args.probe_batch:
        cfg, probed = probe_batch(cfg, ctx, args.probe_batch)
        if cfg is None:
            tried = ", ".join(f"{r['batch_size']}" for r in probed)
            sys.exit(f"error: out of memory at every batch tried ({tried}): {probed[-1]['error']}")
    loop, batch = build(cfg, ctx)
    flops_per_step = count_flops(loop, batch)

    # memory per video: the peak's growth from half the batch to the batch
    half = max(1, cfg.train.batch_size // 2)
    reset_peak(device)
    loop.run_step({"video": batch["video"][:half]})
    sync(device)
    half_peak = peak_memory_mb(device)
    times = []
    for i in range(args.warmup + args.steps):
        sync(device)
        start = time.perf_counter()
        loop.run_step(batch)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    s_per_step = statistics.median(times)
    train_peak = peak_memory_mb(device)
    per_video = (train_peak - half_peak) / (cfg.train.batch_size - half) if cfg.train.batch_size > half else None
    profile = profile_step(loop, batch) if args.profile else None

    # sampling: 1 -> seq_len - 1 prediction through the generation path of video_sample.py
    # (one rank's share of --sampling_batch videos), in the run's --precision
    model = loop.model.eval()
    n = args.sampling_batch
    opts = SampleOptions(task="prediction", num_cond_frames=1, num_samples=n, batch_size=n, sampler=args.sampler,
                         steps=args.sampling_steps, precision=cfg.train.precision)
    # the given frames come from the embedded videos (same shape): timing needs no folder scan
    sample_cfg = apply_overrides(cfg, {"data_dir": ""})
    plan = resolve_plan(sample_cfg, opts)
    sync(device)
    start = time.perf_counter()
    generate(model, plan, distributed.DistContext(0, 1, 0, 1, device, "single"))
    sync(device)
    sample_s_per_video = (time.perf_counter() - start) / n
    sampler_text = plan.describe()

    achieved_tflops = flops_per_step / s_per_step / 1e12
    result = {
        "train_s_per_step": s_per_step,
        "train_videos_per_s": cfg.train.batch_size / s_per_step,
        "train_peak_mem_mb": train_peak,
        "train_mem_per_video_mb": per_video,
        "batch_size": cfg.train.batch_size,
        "batch_probe": probed,
        "profile": profile,
        "sample_s_per_video": sample_s_per_video,
        "flops_per_step": flops_per_step,
        "achieved_tflops": achieved_tflops,
        "mfu": achieved_tflops / args.peak_tflops if args.peak_tflops else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "config": cfg.to_dict(),
        "benchmark": {"steps": args.steps, "warmup": args.warmup, "sampler": sampler_text,
                      "sample_steps": args.sampling_steps, "sample_batch": n},
    }
    rows = [("device", result["device"]),
            ("train s/step (median)", f"{s_per_step:.3f}"),
            ("train videos/s", f"{result['train_videos_per_s']:.2f}"),
            ("train batch", f"{cfg.train.batch_size}" + (f" (largest that fits of {', '.join(str(r['batch_size']) for r in probed)})" if probed else "")),
            ("train peak memory MB", f"{train_peak:.0f}"),
            ("train memory per video MB", f"{per_video:.0f}" if per_video is not None else "(batch 1)"),
            ("GFLOP per step", f"{flops_per_step / 1e9:.1f}"),
            ("achieved TFLOP/s", f"{achieved_tflops:.3f}"),
            ("MFU", f"{result['mfu']:.1%}" if result["mfu"] is not None else "(give --peak_tflops)"),
            (f"sample s/video ({sampler_text}; batch {n}, {cfg.train.precision})", f"{sample_s_per_video:.2f}")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if profile:
        print(format_profile(profile))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    distributed.cleanup(ctx)


if __name__ == "__main__":
    sys.exit(main())
