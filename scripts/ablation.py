"""
The method's claim, reproduced: conditional training against the same network trained
unconditionally and sampled with replacement (and resampling), frame guidance, what the
preset's recipe buys over the plain network, and the plain network with and without the
mask input, on the embedded moving digits. One command, one table.

    python scripts/ablation.py                 # the full study, two training seeds: about 85 minutes on 2 CPU cores
    python scripts/ablation.py --quick         # a smoke version in a few minutes (CI)
    python scripts/ablation.py --preset small --train_seeds 3 --num_videos 64   # larger, e.g. on a GPU

Rows (trained models differ from "b" only in the fields named in the report):
  a  the plain network (no nearest-given-frame input, no kernel head: it draws every frame),
     mask not input (RaMViD)
  b  conditional training, the preset's recipe (on tiny/small: mask input, nearest given
     frame input; on tiny also the kernel head that copies and carries the given frames)
  c  b's network trained unconditionally (--uncondition_rate 1), sampled with replacement
  d  c with resampling (--resample_steps R, one row per --resample value)
  e  b with frame guidance (one row per --guidance scale)
  f  the plain network with the mask input (a and f test the mask input; f and b the recipe)
Tasks: prediction 1 -> T-1 and 2 -> T-2, infilling with the first and last frames given,
and generation (FVD only, once per trained model). Every row samples the same held-out test
videos with the same sampler, network evaluations and seeds; every figure is a mean over
training seeds and sampling seeds, with the spread over both.

Writes into --out_dir: ablation.md (the tables and every command), ablation.json (every
figure of every cell), ablation_pred2.png and ablation_infill.png (each row's samples of the
same videos, training seed 0). Rerunning resumes: trained models and finished cells are
reused (a cell or model made with other settings is an error, never mixed in). Each training
and evaluation command is printed; any cell can be rerun by hand with it.
"""

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from video_diffusion.studies import ablation as study
from video_diffusion import distributed
from video_diffusion.flags import parse_float_list, parse_int_list
from video_diffusion.files import check_output_folder, write_atomically, write_image, write_json, write_npz
from video_diffusion.checkpoints import checkpoint_name, load_checkpoint
from video_diffusion.config import PRESETS, Config, add_config_flags, config_differences, config_from_args
from video_diffusion.evaluation.perfect import perfect_model_scores
from video_diffusion.evaluation.quality import evaluate
from video_diffusion.evaluation.weights import add_i3d_flags, load_i3d
from video_diffusion.sampling.loading import load_for_sampling
from video_diffusion.sampling.options import SampleOptions
from video_diffusion.sampling.plan import resolve_plan, task_mask, test_dataset
from video_diffusion.sampling.samplers import SAMPLERS

SCRIPTS = Path(__file__).resolve().parent


def script(name: str) -> str:
    """The path of one of this folder's scripts, relative to the working directory when it lies below it."""
    path = SCRIPTS / name
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
PICTURE_TASKS = ("pred2", "infill")

# --quick: every row, task and seed of the study, on a network and budget that take minutes.
QUICK = dict(max_steps=20, num_videos=2, fvd_videos=4, gen_frames=10, steps=4, resample="2,3", guidance="1.5,3",
             picture_videos=2, train_flags="--num_channels 16 --save_interval 20 --log_interval 10 --batch_size 4")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--out_dir", default="ablation", help="where models, cells and results go (default: ablation)")
    p.add_argument("--quick", action="store_true",
                   help="smoke version: " + ", ".join(f"--{k} {v}" for k, v in QUICK.items()))
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="training preset of every model")
    p.add_argument("--max_steps", type=int, default=0, help="training steps of every model (default: the preset's)")
    p.add_argument("--train_flags", default="", help="more video_train.py flags for every model, e.g. "
                                                     "'--num_channels 64' (the same for all models)")
    p.add_argument("--launcher", default="python",
                   help="how to start training, e.g. 'mpiexec -n 8 python' or 'torchrun --nproc_per_node 8'")
    p.add_argument("--train_seeds", type=int, default=2,
                   help="models trained per variant, seeds 0..n-1 (default 2: a difference between rows "
                        "is then tested against a second draw of the training)")
    p.add_argument("--variants", default="abcdef", help="which rows, as letters (default: abcdef)")
    p.add_argument("--resample", default="5", help="variant d: resampling repetitions R, one row each")
    p.add_argument("--guidance", default="2", help="variant e: frame guidance scales, one row each")
    p.add_argument("--seeds", type=int, default=3, help="sampling seeds (at least 3)")
    p.add_argument("--num_videos", type=int, default=16, help="held-out test videos per conditioned task")
    p.add_argument("--samples_per_video", type=int, default=1,
                   help="samples per test video (with more than one, a best-of-k table too)")
    p.add_argument("--fvd_videos", type=int, default=32, help="videos generated (and real clips) for FVD")
    p.add_argument("--gen_frames", type=int, default=16, help="frames of a generated video (I3D needs >= 10)")
    p.add_argument("--sampler", default="ddim", choices=tuple(SAMPLERS),
                   help="the sampler of every row (default ddim: the one that can resample)")
    p.add_argument("--steps", type=int, default=20, help="network evaluations per window (x R when resampling)")
    p.add_argument("--batch_size", type=int, default=32, help="videos per forward pass when sampling")
    p.add_argument("--picture_videos", type=int, default=4, help="test videos in each picture")
    p.add_argument("--dry_run", action="store_true", help="print every command and exit")
    add_i3d_flags(p)
    return p


def settings_of(args) -> dict:
    """The study's settings: what every figure depends on (stored, and compared on a rerun)."""
    keys = ("preset", "max_steps", "train_flags", "train_seeds", "variants", "resample", "guidance", "seeds",
            "num_videos", "samples_per_video", "fvd_videos", "gen_frames", "sampler", "steps", "i3d_weights")
    return {k: getattr(args, k) for k in keys}


def train_models(args, rows, out: Path):
    """Train each model of the study (or reuse a finished one); returns {(model, seed): checkpoint}."""
    checkpoints = {}
    extra = args.train_flags.split()
    for model in study.models_of(rows):
        for seed in range(args.train_seeds):
            log_dir = out / "train" / f"{model}_seed{seed}"
            argv = study.train_argv(args.preset, model, str(log_dir), seed, args.max_steps, extra)
            train_script = script("video_train.py")
            print(f"[train {model}, seed {seed}] {study.command(train_script, argv, args.launcher)}", flush=True)
            final = log_dir / checkpoint_name(args.max_steps)
            if args.dry_run:
                checkpoints[model, seed] = final
                continue
            if not final.exists():
                launcher = [sys.executable] if args.launcher == "python" else args.launcher.split()
                start = time.time()
                done = subprocess.run([*launcher, train_script, *argv])
                if done.returncode != 0 or not final.exists():
                    raise SystemExit(f"training model {model} (seed {seed}) failed with exit status "
                                     f"{done.returncode}; its log is {log_dir / 'log.txt'}; rerun to resume")
                print(f"  trained in {time.time() - start:.0f} s", flush=True)
            check_trained(final, argv)
            checkpoints[model, seed] = final
    return checkpoints


def check_trained(path: Path, argv) -> None:
    """A reused checkpoint must hold exactly the configuration these flags give."""
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_config_flags(parser)
    expected = config_from_args(parser.parse_args(argv)).to_dict()
    stored = load_checkpoint(path)["config"]
    diff = config_differences(stored, expected)
    if diff:
        raise SystemExit(f"{path} was trained with other settings than this study asks for "
                         f"({', '.join(f'{k}: {a!r} != {b!r}' for k, (a, b) in diff.items())}); "
                         "use another --out_dir or delete it")


def cell_options(args, row, task, seed) -> SampleOptions:
    gen = task.generation
    return SampleOptions(**dict(task.options), **row.options(), sampler=args.sampler, steps=args.steps, seed=seed,
                         num_samples=args.fvd_videos if gen else args.num_videos,
                         samples_per_video=1 if gen else args.samples_per_video, batch_size=args.batch_size)


def cells_of(args, rows, tasks):
    """Every (row, task, sampling seed) the study measures: generation once per model."""
    for row in rows:
        for task in tasks:
            if task.generation and study.generation_row(rows, row.model).key != row.key:
                continue
            for seed in range(args.seeds):
                yield row, task, seed


def run_cells(args, rows, tasks, checkpoints, out: Path, ctx, i3d):
    """Evaluate every cell (or read a finished one); returns {(train seed, row, task, seed): record}."""
    records = {}
    loaded = {}
    real_features = {}  # I3D features of the real clips, computed once for all generation cells
    for train_seed in range(args.train_seeds):
        for row, task, seed in cells_of(args, rows, tasks):
            ckpt = checkpoints[row.model, train_seed]
            opts = cell_options(args, row, task, seed)
            cell_dir = out / "cells" / f"train{train_seed}" / row.key / task.key
            argv = ["--model_path", str(ckpt), "--out_dir", str(cell_dir / "evaluate"),
                    "--fvd", "true" if task.generation else "false", *study.sample_argv(opts)]
            if task.generation and args.i3d_weights:
                argv += ["--i3d_weights", args.i3d_weights]
            cmd = study.command(script("evaluate.py"), argv)
            path = cell_dir / f"seed{seed}.json"
            print(f"[{row.key} {task.key} seed {seed}] {cmd}", flush=True)
            if args.dry_run:
                continue
            if path.exists():
                record = json.loads(path.read_text())
                if record["options"] != dataclasses.asdict(opts) or record["checkpoint"] != str(ckpt):
                    raise SystemExit(f"{path} holds a cell made with other settings; use another --out_dir "
                                     "or delete it")
            else:
                if (row.model, train_seed) not in loaded:
                    loaded.clear()  # one model in memory at a time
                    cfg, model, _ = load_for_sampling(ckpt, device=ctx.device)
                    loaded[row.model, train_seed] = cfg, model
                cfg, model = loaded[row.model, train_seed]
                result = evaluate(cfg, model, resolve_plan(cfg, opts), ctx, i3d=i3d if task.generation else None,
                                  grid_videos=args.picture_videos, real_features_cache=real_features)
                cell_dir.mkdir(parents=True, exist_ok=True)
                record = {"metrics": result["metrics"], "options": dataclasses.asdict(opts), "checkpoint": str(ckpt),
                          "command": cmd}
                if seed == 0 and task.key in PICTURE_TASKS:
                    shown = result["shown"]
                    items = sorted(i for i in shown if i % opts.samples_per_video == 0)
                    write_npz(cell_dir / "shown.npz", samples=np.stack([shown[i][0] for i in items]),
                              gt=np.stack([shown[i][1] for i in items]), mask=np.stack([shown[i][2] for i in items]))
                write_json(path, record)
                m = record["metrics"]
                figures = (f"PSNR {m['psnr_mean']:.2f} SSIM {m['ssim_mean']:.3f}" if "psnr_mean" in m
                           else f"FVD {m.get('fvd', float('nan')):.1f}")
                print(f"  {figures}, {m['sample_seconds_per_video']:.2f} s/video", flush=True)
            records[train_seed, row.key, task.key, seed] = record
    return records


def tables_of(args, rows, tasks, records):
    """
    summary[row][task] (mean and std of each figure over the cells), the same per training
    seed (by_seed[row][task][seed]) and the baselines of each task.
    """
    summary, by_seed, baselines = {}, {}, {}
    for row in rows:
        for task in tasks:
            cells = [r["metrics"] for (ts, rk, tk, s), r in records.items() if rk == row.key and tk == task.key]
            if cells:
                summary.setdefault(row.key, {})[task.key] = study.figure_summary(cells)
                by_seed.setdefault(row.key, {})[task.key] = [study.figure_summary(
                    [r["metrics"] for (ts, rk, tk, s), r in records.items()
                     if ts == seed and rk == row.key and tk == task.key]) for seed in range(args.train_seeds)]
    for task in tasks:
        if task.generation:
            continue
        # the baselines are a function of the test videos alone, and every training seed is
        # scored on the same held-out videos: one set of baselines, or the cells are not comparable
        found = {json.dumps(r["metrics"]["baselines"], sort_keys=True)
                 for (ts, rk, tk, s), r in records.items() if tk == task.key}
        if len(found) != 1:
            raise RuntimeError(f"the cells of task {task.key} did not all see the same test videos")
        baselines[task.key] = json.loads(found.pop())
    return summary, by_seed, baselines


def perfect_model(args, tasks, checkpoint):
    """A perfect model's figures on the study's test videos (the same for every training seed),
    per conditioned task (embedded digits only)."""
    cfg = Config.from_dict(load_checkpoint(checkpoint)["config"])
    if cfg.train.data_dir:
        return None
    seq_len = cfg.model.seq_len
    data = test_dataset(cfg, seq_len)
    out = {}
    for task in tasks:
        if task.generation:
            continue
        o = dict(task.options)
        mask = task_mask(o["task"], 1, seq_len, o.get("num_cond_frames", 1), o.get("cond_frames", ""))
        out[task.key] = study.figure_summary([perfect_model_scores(data, mask[0].numpy(), args.num_videos,
                                                                   args.samples_per_video, seed=s)
                                              for s in range(args.seeds)])
    return out


def missing_cells(args, rows, tasks, records):
    return [f"{row.key}/{task.key}/seed{s}" for ts in range(args.train_seeds) for row, task, s in
            cells_of(args, rows, tasks) if (ts, row.key, task.key, s) not in records]


def pictures(rows, tasks, out: Path):
    written = []
    labels = {r.key: r.label for r in rows}
    for task in tasks:
        if task.key not in PICTURE_TASKS:
            continue
        shown = {r.key: np.load(out / "cells" / "train0" / r.key / task.key / "shown.npz") for r in rows}
        first = shown[rows[0].key]
        gt_and_mask = list(zip(first["gt"], first["mask"]))
        image = study.side_by_side(f"{task.label}: ground truth, then each row's first sample (seed 0)",
                                   gt_and_mask, {k: list(z["samples"]) for k, z in shown.items()}, labels)
        path = out / f"ablation_{task.key}.png"
        write_image(path, image)
        written.append(path)
    return written


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--quick" in argv:  # the smoke values become defaults: flags given explicitly still win
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    try:
        resample = parse_int_list(args.resample, "--resample")
        guidance = parse_float_list(args.guidance, "--guidance")
    except ValueError:
        parser.error(f"--resample and --guidance take comma-separated numbers, got {args.resample!r}, "
                     f"{args.guidance!r}")
    try:
        rows = study.study_rows(args.variants, resample, guidance)
    except ValueError as e:
        parser.error(str(e))
    if args.seeds < 3 and not args.dry_run:
        parser.error(f"--seeds must be at least 3 (the table reports mean ± std over sampling seeds), got {args.seeds}")
    for flag in ("train_seeds", "num_videos", "samples_per_video", "fvd_videos", "steps", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.gen_frames < 10:
        parser.error(f"--gen_frames must be >= 10 (I3D's shortest clip), got {args.gen_frames}")
    args.max_steps = args.max_steps or PRESETS[args.preset].get("max_steps", 0)
    if args.max_steps < 1:
        parser.error(f"--max_steps: the preset {args.preset!r} has no step count; give one")

    out = Path(args.out_dir)
    try:
        check_output_folder(out, "--out_dir")
    except ValueError as e:
        parser.error(str(e))
    settings = settings_of(args)
    settings_path = out / "study.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        old = json.loads(settings_path.read_text())
        changed = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)
        parser.error(f"--out_dir {out} holds a study with other settings ({changed}); use another --out_dir")
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)
        write_json(settings_path, settings)

    ctx = distributed.setup_dist()
    if ctx.world_size > 1:
        parser.error("run scripts/ablation.py as one process; give --launcher for multi-GPU training")
    try:  # before any training: a bad --i3d_weights must not surface after an hour of it
        i3d = None if args.dry_run else load_i3d(args.i3d_weights, ctx.device, args.i3d_torchscript)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    start = time.time()
    checkpoints = train_models(args, rows, out)
    trained = time.time()
    seq_len = 0 if args.dry_run else load_checkpoint(checkpoints[rows[0].model, 0])["config"]["model"]["seq_len"]
    tasks = study.study_tasks(seq_len or PRESETS[args.preset].get("seq_len", 8), args.gen_frames)
    records = run_cells(args, rows, tasks, checkpoints, out, ctx, i3d)
    if args.dry_run:
        return
    missing = missing_cells(args, rows, tasks, records)
    if missing:
        raise SystemExit(f"cells missing: {', '.join(missing)}")
    summary, by_seed, baselines = tables_of(args, rows, tasks, records)
    ceiling = perfect_model(args, tasks, checkpoints[rows[0].model, 0])
    tables = study.markdown_tables(rows, tasks, summary, baselines, args.samples_per_video, ceiling, by_seed)
    figures = pictures(rows, tasks, out)
    elapsed = {"total_seconds": time.time() - start, "training_seconds": trained - start}
    commands = sorted({r["command"] for r in records.values()})
    report = [f"# Ablation ({args.preset}, {args.max_steps} steps, {args.train_seeds} training seed(s), "
              f"{args.seeds} sampling seeds)", "",
              f"{args.num_videos} held-out test videos (the same for every training seed) x {args.samples_per_video} samples per conditioned task, "
              f"{args.fvd_videos} generated videos of {args.gen_frames} frames for FVD; sampler {args.sampler}, "
              f"{args.steps} network evaluations per window (x R when resampling, x 2 with guidance). "
              f"Seconds per video: sampling only, one process on {ctx.device}.", "", tables,
              f"Took {elapsed['total_seconds'] / 60:.1f} min ({elapsed['training_seconds'] / 60:.1f} of it training; "
              "reused models and cells cost nothing).", "", "Rows:", ""]
    report += [f"- {r.key}: {r.label} (model {r.model}: "
               f"{', '.join(f'{k} {v}' for k, v in {**study.STUDY_BASE, **study.MODELS[r.model]}.items())}"
               f"{'; ' + ', '.join(f'{k} {v}' for k, v in r.sampling) if r.sampling else ''})" for r in rows]
    report += ["", "Commands:", "", "```"] + [study.command(script("video_train.py"), study.train_argv(
        args.preset, m, str(out / "train" / f"{m}_seed{s}"), s, args.max_steps, args.train_flags.split()),
        args.launcher) for m in study.models_of(rows) for s in range(args.train_seeds)] + commands + ["```", ""]
    write_atomically(out / "ablation.md", lambda f: f.write("\n".join(report).encode()))
    write_json(out / "ablation.json", {
        "settings": settings, "elapsed": elapsed, "device": str(ctx.device),
        "rows": [dataclasses.asdict(r) for r in rows], "tasks": [dataclasses.asdict(t) for t in tasks],
        "models": {m: {**study.STUDY_BASE, **study.MODELS[m]} for m in study.models_of(rows)},
        "summary": summary, "summary_by_training_seed": by_seed, "baselines": baselines, "perfect_model": ceiling,
        "cells": [{"train_seed": ts, "row": rk, "task": tk, "seed": s, **r} for (ts, rk, tk, s), r in
                  sorted(records.items())]})
    print(tables)
    print(f"wrote {out / 'ablation.md'}, {out / 'ablation.json'}, " + ", ".join(str(f) for f in figures))
    distributed.cleanup(ctx)


if __name__ == "__main__":
    main()
