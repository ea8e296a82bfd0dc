"""
The sampler comparison: quality against network evaluations for every sampler and grid, on
the same test videos and seeds, through the generation code of ``video_sample.py``
(``scripts/compare_samplers.py`` is its command line). Each row holds PSNR / SSIM against
the ground truth and against the converged sample of the same noise, and optionally FVD,
as mean and sample standard deviation over the seeds.
"""

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from ..evaluation.metrics import mean_and_std
from ..evaluation.metrics import psnr_of_mse
from ..evaluation.quality import evaluate, video_scores
from ..files import write_atomically, write_json
from ..sampling.generate import generate
from ..sampling.plan import resolve_plan
from ..sampling.samplers import GRIDS, SAMPLERS


def run(cfg, model, opts, ctx):
    start = time.perf_counter()
    out = generate(model, resolve_plan(cfg, opts), ctx)
    seconds = time.perf_counter() - start
    keys = sorted(out)
    return [out[k] for k in keys], seconds / len(keys)


def row_key(row):
    return row["sampler"], row["grid"], row["requested_evaluations"]


def earlier_rows(out_dir, settings):
    """Rows of an earlier run in ``out_dir`` made with exactly ``settings`` (an error if they differ)."""
    path = Path(out_dir) / "samplers.json" if out_dir else None
    if path is None or not path.exists():
        return {}
    try:
        earlier = json.loads(path.read_text())
        rows = {row_key(r): r for r in earlier["rows"]}
        changed = sorted(k for k in settings if earlier.get(k) != settings[k])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a comparison this script wrote ({e}); use another --out_dir") from None
    if changed:
        raise ValueError(f"{path} holds a comparison with other settings ({', '.join(changed)}); use another "
                         f"--out_dir or the same settings to complete it")
    return rows


def write_results(out_dir, settings, rows, table):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "samplers.md", lambda f: f.write((table + "\n").encode()))
    write_json(out / "samplers.json", {**settings, "rows": rows})


def format_table(rows, fvd_head):
    lines = ["| sampler | grid | network evaluations | PSNR (dB) | SSIM | PSNR to the converged sample (dB) |"
             + fvd_head + " s/video |", "| --- " * (7 + bool(fvd_head)) + "|"]
    for r in rows:
        fvd_cell = f" {r['fvd']:.0f} ± {r['fvd_std']:.0f} |" if fvd_head else ""
        lines.append(f"| {r['sampler']} | {r['grid']} | {r['evaluations']} | {r['psnr']:.2f} ± {r['psnr_std']:.2f} | "
                     f"{r['ssim']:.3f} ± {r['ssim_std']:.3f} | {r['psnr_to_converged']:.2f} |{fvd_cell} "
                     f"{r['s_per_video']:.2f} |")
    return "\n".join(lines)


def measure_row(cfg, model, ctx, base, generation, sampler: str, grid: str, evaluations: int, seeds, reference,
                i3d=None, real_features=None) -> dict:
    """
    One row of the comparison: ``sampler`` on ``grid`` with ``evaluations`` network evaluations,
    on the prediction options ``base`` (and, with ``i3d``, FVD of ``generation``), over ``seeds``.

    :param reference: seed -> the converged samples of that seed's noise (what "to converged" compares with).
    """
    psnr, ssim, to_ref, secs, fvd = [], [], [], [], []
    for seed in seeds:
        if i3d is not None:
            opts = dataclasses.replace(generation, sampler=sampler, steps=evaluations, grid=grid, seed=seed)
            fvd.append(evaluate(cfg, model, resolve_plan(cfg, opts), ctx, i3d=i3d, real_features_cache=real_features)
                       ["metrics"]["fvd"])
        opts = dataclasses.replace(base, sampler=sampler, steps=evaluations, grid=grid, seed=seed)
        items, s_per_video = run(cfg, model, opts, ctx)
        scores = np.array([video_scores(sample, gt, mask) for sample, gt, mask in items])
        ref = np.array([video_scores(sample, r[0], mask)[0] for (sample, _, mask), r in zip(items, reference(seed))])
        psnr.append(psnr_of_mse(scores[:, 0].mean()))
        ssim.append(scores[:, 1].mean())
        to_ref.append(psnr_of_mse(ref.mean()))
        secs.append(s_per_video)
    spec = SAMPLERS[sampler]  # the evaluations actually spent (a two-evaluation step rounds the budget down)
    nfe = spec.evaluations(spec.steps_for(evaluations) if evaluations else cfg.diffusion.diffusion_steps)
    row = {"sampler": sampler, "grid": grid, "requested_evaluations": evaluations, "evaluations": nfe,
           **dict(zip(("psnr", "psnr_std"), mean_and_std(psnr))), **dict(zip(("ssim", "ssim_std"), mean_and_std(ssim))),
           "psnr_to_converged": float(np.mean(to_ref)), "s_per_video": float(np.median(secs)),
           "per_seed": {"psnr": psnr, "ssim": ssim, "psnr_to_converged": to_ref}}
    if fvd:
        row.update(zip(("fvd", "fvd_std"), mean_and_std(fvd)))
        row["per_seed"]["fvd"] = fvd
    return row


def table_order(rows: dict) -> list:
    """Rows (by ``row_key``) in the table's order: sampler, grid, budget (0 = every step, last)."""
    return [rows[k] for k in sorted(rows, key=lambda k: (list(SAMPLERS).index(k[0]), GRIDS.index(k[1]), k[2] or 10 ** 9))]
