"""
The method's ablation study, as data: which models are trained, how each is sampled,
on which tasks, and how the figures are summarised.

The claim under test: a model trained with random un-noised frames predicts and infills
videos consistent with the given frames, where the same network trained unconditionally
and sampled with the given frames pasted in at every step (replacement), even with
resampling, does not. Beside it: frame guidance, what the preset's recipe (the nearest
given frame as input) buys over the plain network, and, on the plain
network, telling it which frames are given (the mask input).

A *row* of the study is a trained model and a way of sampling it; a *cell* is a row on one
task with one sampling seed (and one training seed). The trained models differ from model
"b" in exactly the fields named in ``MODELS``; every row samples with the same sampler,
number of network evaluations, test videos and seeds. ``scripts/ablation.py`` runs it.
"""

import dataclasses
import math
import shlex
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..config import ModelConfig
from ..evaluation.metrics import mean_and_std
from ..sampling.options import SampleOptions
from ..visualize import auto_scale, strip

# Every model of the study is the base preset with these settings (previews off: they cost
# time and measure nothing here). Model "b" is the preset's own recipe; on the CPU presets
# that is the mask input and the nearest given frame as input.
STUDY_BASE = {"sample_interval": 0}

# The plain network: no nearest-given-frame input and no kernel head, so it draws every frame
# itself (on a preset without the head the head's fields are already these). The mask input is
# compared on it, because the recipe's given-frame input and kernel head need the mask.
PLAIN = {"given_frame_input": False,
         **{name: getattr(ModelConfig(), name) for name in ("kernel_head", "kernel_copy", "kernel_motion",
                                                            "kernel_motion_far")}}  # the defaults: no head

# The trained models: each one's settings that differ from model "b".
MODELS: Dict[str, Dict[str, Any]] = {
    "a": {**PLAIN, "mask_input": False},
    "b": {},
    "c": {"uncondition_rate": 1.0},
    "f": dict(PLAIN),
}

MODEL_LABELS = {
    "a": "plain network, mask not input (RaMViD)",
    "b": "conditional training, the preset's recipe",
    "c": "unconditional training of b's network, replacement",
    "f": "plain network, mask input",
}


@dataclass(frozen=True)
class Row:
    """A trained model and how it is sampled."""
    key: str
    model: str
    label: str
    sampling: Tuple[Tuple[str, Any], ...] = ()  # SampleOptions fields set for this row

    def options(self) -> Dict[str, Any]:
        return dict(self.sampling)


@dataclass(frozen=True)
class Task:
    key: str
    label: str
    options: Tuple[Tuple[str, Any], ...]  # SampleOptions fields that define the task

    @property
    def generation(self) -> bool:
        return dict(self.options)["task"] == "generation"


def study_rows(variants: str, resample: Sequence[int], guidance: Sequence[float]) -> List[Row]:
    """
    The rows for the variant letters in ``variants``: a (plain network, no mask input),
    b (the preset's recipe), c (b's network trained unconditionally, replacement), d (c
    with resampling, one row per R in ``resample``), e (b with frame guidance, one row per
    scale in ``guidance``), f (plain network with the mask input).
    """
    unknown = sorted(set(variants) - set("abcdef"))
    if unknown or not variants:
        raise ValueError(f"--variants must be letters from 'abcdef', got {variants!r}")
    if "d" in variants and (not resample or min(resample) < 2):
        raise ValueError(f"--resample must list repetitions >= 2 for variant d, got {list(resample)}")
    if "e" in variants and (not guidance or any(w == 1.0 or w <= 0 for w in guidance)):
        raise ValueError(f"--guidance must list scales > 0 other than 1 for variant e, got {list(guidance)}")
    rows = []
    for v in "abcdef":
        if v not in variants:
            continue
        if v in "abf":
            rows.append(Row(v, v, MODEL_LABELS[v]))
        elif v == "c":
            rows.append(Row("c", "c", MODEL_LABELS["c"], (("conditioning", "replacement"),)))
        elif v == "d":
            rows += [Row(f"d{r}", "c", f"unconditional, replacement + resampling R={r}",
                         (("conditioning", "replacement"), ("resample_steps", r))) for r in resample]
        else:
            rows += [Row(f"e{w:g}", "b", f"b + frame guidance w={w:g}", (("guidance_scale", w),)) for w in guidance]
    return rows


def models_of(rows: Sequence[Row]) -> List[str]:
    return sorted({r.model for r in rows})


def study_tasks(seq_len: int, gen_frames: int) -> List[Task]:
    """Prediction 1 -> T-1 and 2 -> T-2, infilling between the first and last frames, and generation."""
    last = seq_len - 1
    return [Task("pred1", f"prediction 1 -> {last}", (("task", "prediction"), ("num_cond_frames", 1))),
            Task("pred2", f"prediction 2 -> {last - 1}", (("task", "prediction"), ("num_cond_frames", 2))),
            Task("infill", f"infill 0,{last}", (("task", "infill"), ("cond_frames", f"0,{last}"))),
            Task("gen", f"generation, {gen_frames} frames", (("task", "generation"), ("num_frames", gen_frames)))]


def generation_row(rows: Sequence[Row], model: str) -> Row:
    """
    Generation has no given frames, so it depends on the model only: it is measured once
    per model, on the first row of that model, sampled as that model samples by default
    (a longer clip's later windows are conditioned on earlier frames the model's own way).
    """
    return next(r for r in rows if r.model == model)


def train_argv(preset: str, model: str, log_dir: str, seed: int, max_steps: int,
               extra: Sequence[str] = ()) -> List[str]:
    """The flags of ``video_train.py`` that train ``model`` of the study."""
    settings = {**STUDY_BASE, **MODELS[model]}
    argv = ["--preset", preset, "--log_dir", log_dir, "--seed", str(seed), "--max_steps", str(max_steps)]
    for name, value in settings.items():
        argv += [f"--{name}", _flag_value(value)]
    return argv + list(extra)


def _flag_value(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


ALWAYS_SPELLED = ("task", "num_samples", "samples_per_video", "seed", "sampler", "steps")


def sample_argv(opts: SampleOptions) -> List[str]:
    """
    The sampling flags (of video_sample.py / evaluate.py) that give ``opts``: the fields
    that differ from SampleOptions' defaults, and those a script may default differently.
    """
    argv = []
    defaults = SampleOptions()
    for f in dataclasses.fields(SampleOptions):
        value = getattr(opts, f.name)
        if f.name in ALWAYS_SPELLED or value != getattr(defaults, f.name):
            argv += [f"--{f.name}", _flag_value(value)]
    return argv


def command(script: str, argv: Sequence[str], launcher: str = "python") -> str:
    return shlex.join([*shlex.split(launcher), script, *argv])


# ---------------------------------------------------------------------------------------
# Summaries

FIGURES = ("psnr_mean", "psnr_best", "ssim_mean", "ssim_best", "fvd", "sample_seconds_per_video")


def figure_summary(cells: Sequence[Dict]) -> Dict[str, Dict[str, float]]:
    """
    Mean and standard deviation (over every seed, sampling and training) of each figure.

    :param cells: the metrics of one row on one task, one dict per (training seed, sampling seed).
    """
    out = {}
    for name in FIGURES:
        values = [c[name] for c in cells if name in c and c[name] is not None and math.isfinite(c[name])]
        if values:
            mean, std = mean_and_std(values)
            out[name] = {"mean": mean, "std": std, "n": len(values)}
    return out


def _cell(summary: Optional[Dict], name: str, digits: int) -> str:
    if not summary or name not in summary:
        return "–"
    s = summary[name]
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown_tables(rows: Sequence[Row], tasks: Sequence[Task], summary: Dict, baselines: Dict,
                    samples_per_video: int, ceiling: Optional[Dict] = None,
                    by_seed: Optional[Dict] = None) -> str:
    """
    The study's tables: PSNR / SSIM (mean over samples) per conditioned task with FVD for
    generation and the sampling time; the same with the best of k samples per video; and,
    with more than one training seed, each training seed's means side by side.

    :param summary: summary[row][task] from ``figure_summary``.
    :param baselines: baselines[task] = {"copy_last_given": {"psnr", "ssim"}, "black": {...}}.
    :param ceiling: ceiling[task], a perfect model's figures summarised like a row's (embedded digits only).
    :param by_seed: by_seed[row][task] = [``figure_summary`` of training seed 0, of seed 1, ...].
    """
    cond = [t for t in tasks if not t.generation]
    gen = [t for t in tasks if t.generation]
    timed = next((t for t in cond if t.key == "pred2"), cond[0] if cond else None)

    def table(kind: str) -> List[str]:
        head = ["row", "variant"]
        for t in cond:
            head += [f"{t.label} PSNR", "SSIM"]
        head += [f"{t.label} FVD" for t in gen]
        if timed is not None and kind == "mean":
            head.append(f"s / video ({timed.label})")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [r.key, r.label]
            for t in cond:
                s = summary.get(r.key, {}).get(t.key)
                cells += [_cell(s, f"psnr_{kind}", 2), _cell(s, f"ssim_{kind}", 3)]
            for t in gen:
                g = generation_row(rows, r.model)
                s = summary.get(g.key, {}).get(t.key)
                cells.append(_cell(s, "fvd", 0) if g.key == r.key else f"= {g.key}")
            if timed is not None and kind == "mean":
                cells.append(_cell(summary.get(r.key, {}).get(timed.key), "sample_seconds_per_video", 2))
            lines.append("| " + " | ".join(cells) + " |")
        if ceiling:
            cells = ["–", "perfect model (exact posterior)"]
            for t in cond:
                cells += [_cell(ceiling.get(t.key), f"psnr_{kind}", 2), _cell(ceiling.get(t.key), f"ssim_{kind}", 3)]
            cells += ["–"] * len(gen) + (["–"] if timed is not None and kind == "mean" else [])
            lines.append("| " + " | ".join(cells) + " |")
        for name, label in (("copy_last_given", "copy last given frame"), ("black", "black frame")):
            cells = ["–", label]
            for t in cond:
                b = baselines.get(t.key, {}).get(name)
                cells += [f"{b['psnr']:.2f}" if b else "–", f"{b['ssim']:.3f}" if b else "–"]
            cells += ["–"] * len(gen) + (["–"] if timed is not None and kind == "mean" else [])
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    out = ["Mean over samples (mean ± sample standard deviation, ddof 1, over seeds):", ""] + table("mean")
    if samples_per_video > 1:
        out += ["", f"Best of {samples_per_video} samples per video (mean ± sample standard deviation, ddof 1, over seeds):", ""] + table("best")
    if by_seed and max(len(v) for r in by_seed.values() for v in r.values()) > 1:
        out += ["", "Each training seed on its own (mean over samples and sampling seeds; seed 0 / seed 1 / ...): "
                    "a difference between two rows that the seeds do not agree on is not a finding.", ""]
        out += per_seed_table(rows, tasks, by_seed)
    return "\n".join(out) + "\n"


def per_seed_table(rows: Sequence[Row], tasks: Sequence[Task], by_seed: Dict) -> List[str]:
    """One line per row: each figure as 'seed 0 / seed 1 / ...' (means over sampling seeds)."""
    cond = [t for t in tasks if not t.generation]
    gen = [t for t in tasks if t.generation]
    head = ["row"] + [x for t in cond for x in (f"{t.label} PSNR", "SSIM")] + [f"{t.label} FVD" for t in gen]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def seeds(row_key, task_key, name, digits):
        per = by_seed.get(row_key, {}).get(task_key) or []
        return " / ".join(f"{s[name]['mean']:.{digits}f}" if name in s else "–" for s in per) or "–"

    for r in rows:
        cells = [r.key]
        for t in cond:
            cells += [seeds(r.key, t.key, "psnr_mean", 2), seeds(r.key, t.key, "ssim_mean", 3)]
        for t in gen:
            g = generation_row(rows, r.model)
            cells.append(seeds(g.key, t.key, "fvd", 0) if g.key == r.key else f"= {g.key}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def side_by_side(task_label: str, gt_and_mask: Sequence[Tuple[np.ndarray, np.ndarray]],
                 samples: Dict[str, Sequence[np.ndarray]], labels: Dict[str, str]) -> Image.Image:
    """
    One block per test video: its ground truth, then each row's first sample, every strip
    labelled with its row (given frames outlined, as in every preview of this project).

    :param gt_and_mask: per test video, (uint8 [T, H, W, C] ground truth, obs_mask [T]).
    :param samples: samples[row] = per test video, uint8 [T, H, W, C].
    """
    size = gt_and_mask[0][0].shape[1]
    scale = auto_scale(size)
    font = ImageFont.load_default()
    names = ["ground truth"] + [f"{k}: {labels[k]}" for k in samples]
    margin = 8 + max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(n, font=font)) for n in names)
    strips = []
    for v, (gt, mask) in enumerate(gt_and_mask):
        strips.append((names[0], strip(gt, mask, scale)))
        strips += [(f"{k}: {labels[k]}", strip(vids[v], mask, scale)) for k, vids in samples.items()]
        strips.append(None)  # a gap between test videos
    width = margin + max(s[1].width for s in strips if s)
    gap = 8
    title_h = 16
    height = title_h + sum(s[1].height + 2 if s else gap for s in strips)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), task_label, fill="black", font=font)
    y = title_h
    for s in strips:
        if s is None:
            y += gap
            continue
        name, img = s
        canvas.paste(img, (margin, y))
        draw.text((4, y + img.height // 2 - 5), name, fill="black", font=font)
        y += img.height + 2
    return canvas
