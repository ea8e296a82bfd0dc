"""
The learning curve of a run: every checkpoint measured on the same held-out videos, against
the two predictors that need no model and, on the embedded digits, the perfect model.

Per checkpoint (``measure_checkpoint``):

- the conditional tasks of ``curve_tasks``: prediction from 2 frames, prediction from half
  the window, infilling from the first and last frame; PSNR / SSIM over the generated frames;
- generation: FVD of rolled-out clips against as many real held-out clips;
- the diagnostic ``x0_from_noise``: the network's own prediction of the clean video from
  pure noise plus the first 2 frames (one network call at the last timestep), its mean
  squared error per predicted frame. It shows what the network has learned to carry forward
  before any sampler is involved: a network that has learned motion is near 0 on the first
  predicted frames, one that has learned only the data's look sits near the black frame;
- with it, "motion use": how much that x_0 gains from the earlier given frame (the error
  with the last given frame alone minus the error with both). Two frames are what tell a
  velocity; a network that only carries the nearest given frame forward gains nothing;
- the diagnostic ``temporal_use``: at high noise (t = 850, 900, 950 of 1000), where a
  generated video's content is decided, how much the network's x_0 of a frame gains from the
  video's other frames: the error with the other frames blanked (black, noised alike) minus
  the error with them. A network that pools what the frames share across time shows a gap;
  one that treats each frame alone shows none;
- a picture, ``beliefs_picture``: the network's x_0 of 4 held-out videos from pure noise and
  from their truth noised to t = 700 and 400 (2 frames given), which tells "does not know what
  comes next" (a blur from noise) from "does not use what it sees" (a wrong shape at 400).

The references (``references``) are computed once per curve: both baselines per task, the
perfect model (exact posterior samples, ``perfect.py``), the object tracker, and the FVD of real clips against
other real clips (what a perfect generator scores with this many clips).
"""

import itertools
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .. import distributed
from ..build import create_diffusion
from ..data import create_dataset, embedded_digits
from ..seeds import seed_of
from ..sampling.loading import load_for_sampling
from ..sampling.options import SampleOptions
from ..sampling.outputs import to_uint8
from ..sampling.plan import resolve_plan, task_mask, test_dataset
from ..sampling.denoiser import make_denoiser
from ..visualize import auto_scale, grid, strip
from .tracker import track
from .fvd import fvd_from_features, i3d_features
from .metrics import PSNR_CAP
from .quality import copy_last_given, evaluate, set_scores, video_scores

# Videos that are neither training nor test videos: the perfect generator's FVD compares them with the test clips.
OTHER_REAL_SEED = 0x07E4


def curve_tasks(seq_len: int) -> List[Dict]:
    """The conditional tasks of a curve for a window of ``seq_len`` frames: key, label, SampleOptions fields."""
    half = seq_len // 2
    tasks = [dict(key="pred2", label=f"2 -> {seq_len - 2}", task="prediction", num_cond_frames=2)]
    if half > 2:
        tasks.append(dict(key="pred_half", label=f"{half} -> {seq_len - half}", task="prediction",
                          num_cond_frames=half))
    tasks.append(dict(key="infill", label=f"infill 0,{seq_len - 1}", task="infill", cond_frames=f"0,{seq_len - 1}"))
    return tasks


def _options(task: Dict, num_videos: int, seed: int, **extra) -> SampleOptions:
    fields = {k: v for k, v in task.items() if k not in ("key", "label")}
    return SampleOptions(**fields, num_samples=num_videos, seed=seed, **extra)


def _held_out_prediction(cfg, model, num_videos: int, num_given: int, seed: int, tag: int, device):
    """
    The first ``num_videos`` held-out videos with their first ``num_given`` frames given:
    (truth, mask, the full-length diffusion, the network's denoiser over them, one noise video
    per video drawn from its own seed ``seed_of(seed, v, tag)``).
    """
    data = test_dataset(cfg, cfg.model.seq_len)
    gt = torch.stack([data[v]["video"] for v in range(num_videos)]).to(device)
    mask = task_mask("prediction", gt.shape[0], gt.shape[2], num_given, "").to(device)
    diffusion = create_diffusion(cfg, timestep_respacing="")
    gens = [torch.Generator(device="cpu").manual_seed(seed_of(seed, v, tag)) for v in range(num_videos)]
    noise = torch.stack([torch.randn(gt.shape[1:], generator=g) for g in gens]).to(device)
    return gt, mask, diffusion, make_denoiser(diffusion, model, gt, mask), noise


def x0_from_noise(cfg, model, num_videos: int, num_given: int = 2, seed: int = 0, device="cpu") -> Dict:
    """
    The network's x_0 from pure noise plus the first ``num_given`` frames of the held-out
    videos, at the last timestep: mean squared error (in [-1, 1] units) per predicted frame,
    beside a black frame and a copy of the last given frame.

    Also the same x_0 with only the last given frame given (the earlier ones noise, as a
    generated frame is; the same noise), per frame ("last_given_only"), and its mean excess
    over the first ("motion_use"). Motion needs two frames: a network that reads a velocity
    off the given frames is better with them all, one that only carries the nearest given
    frame forward scores the same either way (0). On the embedded digits the perfect model's
    figure is in the curve's references (``perfect_motion_use``).
    """
    gt, mask, diffusion, denoise, noise = _held_out_prediction(cfg, model, num_videos, num_given, seed, 0x0, device)
    t = gt.shape[2]
    x0 = denoise(noise, diffusion.num_timesteps - 1)["pred_xstart"]
    last_only = torch.zeros_like(mask)
    last_only[:, num_given - 1] = 1
    x0_last = make_denoiser(diffusion, model, gt, last_only)(noise, diffusion.num_timesteps - 1)["pred_xstart"]
    per_frame = lambda pred: ((pred.float() - gt) ** 2).mean(dim=(0, 1, 3, 4))[num_given:].tolist()  # noqa: E731
    model_err, last_err = per_frame(x0), per_frame(x0_last)
    return {"frames": list(range(num_given, t)), "model": model_err,
            "black": per_frame(torch.full_like(gt, -1.0)),
            "copy_last_given": per_frame(gt[:, :, num_given - 1:num_given].expand_as(gt)),
            "last_given_only": last_err, "motion_use": float(np.mean(last_err) - np.mean(model_err))}


def perfect_motion_use(data, num_videos: int, num_given: int = 2, samples: int = 16, seed: int = 0) -> Dict:
    """
    ``x0_from_noise``'s "motion_use" for the perfect model of the embedded digits: the mean
    squared error per predicted frame of its posterior mean (the average of ``samples`` exact
    posterior samples, ``perfect.py``) from the first ``num_given`` frames and from the last
    of them alone, and the mean difference. With two frames the motion is known (error ~0);
    from one the velocity is open, and the mean blurs over it.
    """
    from .perfect import perfect_samples

    givens = {"model": list(range(num_given)), "last_given_only": [num_given - 1]}
    sq = {key: [] for key in givens}
    for v in range(num_videos):
        gt = data.frames(v).astype(np.float64) / 127.5 - 1.0
        for key, given in givens.items():
            mean = perfect_samples(data, v, given, samples, seed=seed).astype(np.float64).mean(axis=0) / 127.5 - 1.0
            sq[key].append(((mean - gt) ** 2).mean(axis=(1, 2, 3))[num_given:])
    errors = {key: np.mean(values, axis=0).tolist() for key, values in sq.items()}
    return {**errors, "motion_use": float(np.mean(errors["last_given_only"]) - np.mean(errors["model"]))}


def motion_reference(cfg, num_videos: int) -> Dict:
    """The references' "motion_use" entry of a digits curve: the perfect model's figure."""
    return {"perfect": perfect_motion_use(test_dataset(cfg, cfg.model.seq_len), num_videos)}


BELIEF_TIMESTEPS = (1000, 700, 400)


@torch.no_grad()
def beliefs_picture(cfg, model, path, num_videos: int = 4, num_given: int = 2, timesteps=BELIEF_TIMESTEPS,
                    seed: int = 0, device="cpu") -> Path:
    """
    What the network believes the clean video is, before any sampling: for the first
    ``num_videos`` held-out videos, a block of rows (the truth, then the network's x_0 at each
    of ``timesteps`` of 1000, from the truth noised to that level, the first ``num_given``
    frames given clean; 1000 is the last step, noise alone for all purposes). A blur at 1000
    where the truth is sharp says the network does not know what comes next (the mean over its
    doubts); a sharp wrong shape at 400,
    where the noised truth still shows it, says it does not use what it sees. Written to ``path``.
    """
    gt, mask, diffusion, denoise, noise = _held_out_prediction(cfg, model, num_videos, num_given, seed, 0xB1, device)
    n = gt.shape[0]
    rows = [gt]
    for t in timesteps:
        step = min(diffusion.num_timesteps - 1, round(t * diffusion.num_timesteps / 1000))
        x_t = diffusion.q_sample(gt, torch.full((n,), step, device=device, dtype=torch.long), noise)
        x0 = denoise(x_t, step)["pred_xstart"].clamp(-1, 1)
        rows.append(torch.where(mask[:, None, :, None, None] > 0, gt, x0))  # the given frames as given
    scale = auto_scale(gt.shape[-1])
    blocks = [[strip(to_uint8(r[v:v + 1])[0], mask[v].tolist(), scale) for r in rows] for v in range(n)]
    path = Path(path)
    grid(blocks).save(path)
    return path


TEMPORAL_USE_TIMESTEPS = (850, 900, 950)


@torch.no_grad()
def temporal_use(cfg, model, num_videos: int, timesteps=TEMPORAL_USE_TIMESTEPS, seed: int = 0, device="cpu") -> Dict:
    """
    Per timestep (of 1000; scaled to --diffusion_steps), the x_0 error (mean squared, [-1, 1]
    units) of the held-out videos' frames with no frame given, each frame denoised once with the
    video's own other frames and once with them blanked (black frames noised with the same
    noise): {"t": [...], "with_others": [...], "others_blanked": [...], "gap": blanked - with}.
    """
    data = test_dataset(cfg, cfg.model.seq_len)
    gt = torch.stack([data[v]["video"] for v in range(num_videos)]).to(device)
    n, _, frames = gt.shape[:3]
    diffusion = create_diffusion(cfg, timestep_respacing="")
    mask = torch.zeros(n, frames, device=device)
    denoise = make_denoiser(diffusion, model, gt, mask)
    out = {"t": [], "with_others": [], "others_blanked": [], "gap": []}
    for t in timesteps:
        step = min(diffusion.num_timesteps - 1, round(t * diffusion.num_timesteps / 1000))
        gens = [torch.Generator(device="cpu").manual_seed(seed_of(seed, v, 0x7E, t)) for v in range(n)]
        noise = torch.stack([torch.randn(gt.shape[1:], generator=g) for g in gens]).to(device)
        steps = torch.full((n,), step, device=device, dtype=torch.long)
        x_t = diffusion.q_sample(gt, steps, noise)
        blank_t = diffusion.q_sample(torch.full_like(gt, -1.0), steps, noise)
        with_others = ((denoise(x_t, step)["pred_xstart"].double() - gt.double()) ** 2).mean().item()
        alone = []
        for f in range(frames):
            x = blank_t.clone()
            x[:, :, f] = x_t[:, :, f]
            alone.append(((denoise(x, step)["pred_xstart"][:, :, f].double() - gt[:, :, f].double()) ** 2).mean().item())
        blanked = float(np.mean(alone))
        for key, value in (("t", t), ("with_others", with_others), ("others_blanked", blanked),
                           ("gap", blanked - with_others)):
            out[key].append(value)
    return out


def measure_checkpoint(path, ctx: distributed.DistContext, num_videos: int = 32, seed: int = 0,
                       i3d=None, fvd_videos: int = 32, fvd_frames: int = 16,
                       real_features_cache: Optional[Dict] = None, picture_dir=None) -> Optional[Dict]:
    """
    One point of the curve. Every rank calls this; rank 0 gets a dict: step, videos seen
    and, per task key, psnr / ssim (and fvd for "generation"), plus the x_0 diagnostic.

    :param picture_dir: where rank 0 writes the beliefs picture ``beliefs_<videos seen>.png``
        (named in the point as "beliefs"); None writes none.
    """
    from ..checkpoints import load_checkpoint
    state = load_checkpoint(path)
    step, world_size = int(state["step"]), int(state.get("world_size", 1))
    del state
    cfg, model, _ = load_for_sampling(path, device=ctx.device)
    point = {"step": step, "videos_seen": step * cfg.train.batch_size * world_size, "checkpoint": str(path)}
    for task in curve_tasks(cfg.model.seq_len):
        result = evaluate(cfg, model, resolve_plan(cfg, _options(task, num_videos, seed)), ctx, grid_videos=0)
        if ctx.is_main:
            m = result["metrics"]
            point[task["key"]] = {"psnr": m["psnr_mean"], "ssim": m["ssim_mean"]}
    if i3d is not None and fvd_videos:
        opts = SampleOptions(task="generation", num_frames=fvd_frames, num_samples=fvd_videos, seed=seed)
        result = evaluate(cfg, model, resolve_plan(cfg, opts), ctx, i3d=i3d, grid_videos=0, real_features_cache=real_features_cache)
        if ctx.is_main:
            point["generation"] = {"fvd": result["metrics"]["fvd"]}
    if ctx.is_main:
        point["x0_from_noise"] = x0_from_noise(cfg, model, num_videos, seed=seed, device=ctx.device)
        point["temporal_use"] = temporal_use(cfg, model, num_videos, seed=seed, device=ctx.device)
        if picture_dir is not None:
            name = f"beliefs_{point['videos_seen']}.png"
            beliefs_picture(cfg, model, Path(picture_dir) / name, seed=seed, device=ctx.device)
            point["beliefs"] = name
        return point
    return None


def references(cfg, num_videos: int = 32, i3d=None, fvd_videos: int = 32, fvd_frames: int = 16,
               perfect_samples: int = 1, device="cpu") -> Dict:
    """
    What a curve is drawn against, per task key: "copy_last_given" and "black" (PSNR / SSIM),
    "perfect" (the exact posterior's mean PSNR / SSIM) and "object_tracker" (``evaluation.tracker``),
    both on embedded digits only, and, for
    generation, the FVD of other real clips against the test clips. On the embedded digits also
    "motion_use": the perfect model's ``perfect_motion_use``.
    """
    out: Dict = {}
    data = test_dataset(cfg, cfg.model.seq_len)
    embedded = not cfg.train.data_dir
    digits = embedded_digits(cfg)
    for task in curve_tasks(cfg.model.seq_len):
        mask = task_mask(task["task"], 1, cfg.model.seq_len, task.get("num_cond_frames", 0),
                         task.get("cond_frames", ""))[0].numpy()
        copy, black, tracked = [], [], []
        for v in range(num_videos):
            gt = data.frames(v) if embedded else to_uint8(data[v]["video"][None])[0]
            copy.append(video_scores(copy_last_given(gt, mask), gt, mask))
            black.append(video_scores(np.zeros_like(gt), gt, mask))
            if digits:  # the object tracker: a model-free baseline that knows the digits' rules
                tracked.append(video_scores(track(gt, np.flatnonzero(mask)), gt, mask))
        entry = {"label": task["label"], "copy_last_given": set_scores(copy), "black": set_scores(black)}
        if digits:
            from .perfect import perfect_model_scores
            p = perfect_model_scores(data, mask, num_videos, perfect_samples)
            entry["perfect"] = {"psnr": p["psnr_mean"], "ssim": p["ssim_mean"]}
            entry["object_tracker"] = set_scores(tracked)
        out[task["key"]] = entry
    if digits:
        out["motion_use"] = motion_reference(cfg, num_videos)
    if i3d is not None and fvd_videos and embedded:
        test = test_dataset(cfg, fvd_frames)
        other = create_dataset(cfg, seq_len=fvd_frames, seed_offset=OTHER_REAL_SEED)
        clips = [np.stack([d.frames(v) for v in range(fvd_videos)]) for d in (test, other)]
        clips = [c if c.shape[-1] == 3 else np.repeat(c, 3, axis=-1) for c in clips]
        feats = [i3d_features(i3d, c, device=device) for c in clips]
        out["generation"] = {"label": f"generation FVD ({fvd_videos} clips of {fvd_frames} frames)",
                             "perfect": {"fvd": fvd_from_features(feats[1], feats[0])}}
    return out


def conditional_tasks(refs: Dict) -> List[str]:
    """The keys of a curve's references that are conditional tasks (with both baselines)."""
    return [k for k, v in refs.items() if "copy_last_given" in v]


def check_comparable(curve: Dict, other: Dict, name: str) -> None:
    """
    Refuse to draw ``other`` beside ``curve`` unless both were measured on the same held-out
    videos with the same sampling seed (same data, same references); ``name`` (its file)
    goes in the error.
    """
    if not isinstance(other, dict) or not all(k in other for k in ("settings", "references", "points")):
        raise ValueError(f"{name}: not a learning curve (a curve.json holds settings, references and points)")
    for key in ("num_videos", "seed"):
        if other.get("settings", {}).get(key) != curve["settings"][key]:
            raise ValueError(f"{name}: measured with {key} {other.get('settings', {}).get(key)}, this curve with "
                             f"{curve['settings'][key]}: the curves are not comparable")
    mine, theirs = curve.get("references", {}), other.get("references", {})
    for task in conditional_tasks(mine):
        a, b = mine[task]["copy_last_given"], theirs.get(task, {}).get("copy_last_given", {})
        # the same videos on another CPU round the last digits differently, other videos differ early
        if set(a) != set(b) or not all(math.isclose(a[m], b[m], rel_tol=1e-6) for m in a):
            raise ValueError(f"{name}: its {task} baselines differ from this curve's (other data or other "
                             "held-out videos): the curves are not comparable")


def plot_curve(curve: Dict, path, others: Sequence[Dict] = ()) -> None:
    """
    Quality against videos seen: PSNR and SSIM per conditional task, generation FVD and the
    x_0 diagnostic, each with its references as horizontal lines. Written as a PNG.

    :param others: further curves (``check_comparable`` with this one) drawn beside it, each
        in its own colour and labelled with its title: a lever against its baseline.
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the learning-curve picture needs matplotlib: pip install matplotlib "
                          "(or pip install -e '.[plots]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(curve["points"].values(), key=lambda p: p["step"])
    refs = curve["references"]
    tasks = conditional_tasks(refs)
    x = [p["videos_seen"] for p in points]
    run_label = curve.get("title", "model") if others else "model"
    other_points = [(o.get("title", "other"), colour, sorted(o["points"].values(), key=lambda p: p["step"]))
                    for o, colour in zip(others, itertools.cycle(("tab:red", "tab:gray", "tab:brown", "tab:olive",
                                                                   "tab:cyan")))]  # every curve drawn
    fig, axes = plt.subplots(2, len(tasks) + 2, figsize=(4.2 * (len(tasks) + 2), 7.2), squeeze=False)
    styles = {"copy_last_given": ("copy last given", "tab:orange", "--"), "black": ("black frame", "k", ":"),
              "object_tracker": ("object tracker", "tab:purple", "-."), "perfect": ("perfect model", "tab:green", "-")}
    for col, key in enumerate(tasks):
        for row, metric in enumerate(("psnr", "ssim")):
            ax = axes[row][col]
            ys = [p[key][metric] for p in points if key in p]
            ax.plot(x[:len(ys)], ys, "o-", color="tab:blue", label=run_label)
            for title, colour, pts in other_points:
                ax.plot([p["videos_seen"] for p in pts if key in p], [p[key][metric] for p in pts if key in p],
                        "s-", color=colour, label=title)
                ys = ys + [p[key][metric] for p in pts if key in p]
            top = max(ys + [refs[key][r][metric] for r in ("copy_last_given", "black")])
            for ref, (label, colour, style) in styles.items():
                if ref not in refs[key]:
                    continue
                value = refs[key][ref][metric]
                if metric == "psnr" and value > top + 10:  # a perfect model's 90+ dB would flatten the curve
                    text = "exact (MSE 0)" if value >= PSNR_CAP else f"{value:.1f} dB"  # the cap is no figure
                    ax.annotate(f"{label}: {text}", xy=(0.02, 0.95 - 0.07 * (ref == "object_tracker")),
                                xycoords="axes fraction", color=colour, va="top")
                    continue
                ax.axhline(value, color=colour, linestyle=style, label=f"{label} ({value:.3g})")
            ax.set_title(f"{refs[key]['label']}: {metric.upper()}")
            ax.set_xlabel("videos seen")
            ax.legend(fontsize=7, loc="lower right")
            ax.grid(alpha=0.3)
    ax = axes[0][-1]
    use = [(p["videos_seen"], p["temporal_use"]) for p in points if "temporal_use" in p]
    if use:
        for i, t in enumerate(use[0][1]["t"]):
            ax.plot([u[0] for u in use], [u[1]["gap"][i] for u in use], "o-", label=f"t = {t}")
        for title, colour, pts in other_points:  # one level is enough to compare: the first, where it is largest
            ax.plot([p["videos_seen"] for p in pts], [p["temporal_use"]["gap"][0] for p in pts], "s--",
                    color=colour, label=f"{title}, t = {pts[0]['temporal_use']['t'][0]}" if pts else title)
        ax.axhline(0, color="k", linewidth=0.5)
        ax.legend(fontsize=7)
    ax.set_title("temporal use: x_0 error gained from the other frames")
    ax.set_xlabel("videos seen")
    ax.grid(alpha=0.3)
    ax = axes[1][-1]
    motion = [(p["videos_seen"], p["x0_from_noise"]["motion_use"]) for p in points
              if "motion_use" in p.get("x0_from_noise", {})]  # curves measured before it existed have none
    if motion:
        ax.plot(*zip(*motion), "o-", color="tab:blue", label=run_label)
    for title, colour, pts in other_points:
        pts = [p for p in pts if "motion_use" in p.get("x0_from_noise", {})]
        if pts:
            ax.plot([p["videos_seen"] for p in pts], [p["x0_from_noise"]["motion_use"] for p in pts], "s-",
                    color=colour, label=title)
    if "motion_use" in refs:
        value = refs["motion_use"]["perfect"]["motion_use"]
        ax.axhline(value, color="tab:green", label=f"perfect model ({value:.3f})")
    ax.axhline(0, color="k", linewidth=0.5)
    if not motion and not any("motion_use" in p.get("x0_from_noise", {}) for _, _, pts in other_points for p in pts):
        ax.text(0.5, 0.5, "not measured (curve older than the diagnostic)", ha="center", va="center",
                transform=ax.transAxes)
    else:
        ax.legend(fontsize=7)
    ax.set_title("motion use: x_0 gain from the earlier given frame")
    ax.set_xlabel("videos seen")
    ax.grid(alpha=0.3)
    ax = axes[0][-2]
    fvd = [(p["videos_seen"], p["generation"]["fvd"]) for p in points if "generation" in p]
    if fvd:
        ax.plot(*zip(*fvd), "o-", color="tab:blue", label=run_label)
        for title, colour, pts in other_points:
            ax.plot([p["videos_seen"] for p in pts if "generation" in p],
                    [p["generation"]["fvd"] for p in pts if "generation" in p], "s-", color=colour, label=title)
        if "generation" in refs:
            value = refs["generation"]["perfect"]["fvd"]
            ax.axhline(value, color="tab:green", label=f"real vs real clips ({value:.0f})")
        ax.legend(fontsize=7)
    else:  # an empty axis would read as a failed measurement
        ax.text(0.5, 0.5, "not measured (--fvd_videos 0)", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("generation: FVD (lower is better)")
    ax.set_xlabel("videos seen")
    ax.grid(alpha=0.3)
    ax = axes[1][-2]
    for p, shade in zip(points, np.linspace(0.3, 1.0, len(points))):
        d = p["x0_from_noise"]
        ax.plot(d["frames"], d["model"], "o-", color=(0.1, 0.3, 0.8, shade), label=f"{p['videos_seen']:,} videos")
    for title, colour, pts in other_points:
        if pts:
            d = pts[-1]["x0_from_noise"]
            ax.plot(d["frames"], d["model"], "s--", color=colour, label=f"{title}: {pts[-1]['videos_seen']:,} videos")
    if points:
        d = points[-1]["x0_from_noise"]
        ax.plot(d["frames"], d["black"], "k:", label="black frame")
        ax.plot(d["frames"], d["copy_last_given"], "--", color="tab:orange", label="copy last given")
    ax.set_title("x_0 from pure noise + 2 frames: MSE per frame")
    ax.set_xlabel("frame")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.suptitle(curve.get("title", "learning curve"))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
