"""
The run configuration: four small dataclasses, named presets, and the command line built
from them. Every field is a flag of the same name; its help is the field's ``help``.

Resolution order: field defaults, then the ``--preset``, then flags given explicitly.
The whole configuration is stored in every checkpoint, so sampling and evaluation
rebuild the model from it instead of asking for the flags again.
"""

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .diffusion.masks import check_mask_config, parse_mask_range
from .files import check_output_folder
from .flags import add_dataclass_flags, parse_float_list, parse_int_list
from .presets import PRESETS  # noqa: F401 - part of the configuration's interface


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    image_size: int = _f(64, "frame height and width in pixels")
    seq_len: int = _f(20, "frames per training video (the model's window)")
    rgb: bool = _f(True, "3-channel videos; False for grayscale")
    num_channels: int = _f(128, "base channel width of the UNet")
    num_res_blocks: int = _f(2, "residual blocks per resolution level")
    channel_mult: str = _f("", "width multiplier per level, e.g. '1,2,3,4'; empty = chosen from image_size")
    attention_resolutions: str = _f("16,8", "frame sizes (pixels) at which attention is used, e.g. '16,8'")
    attention_type: str = _f("factorized", "'factorized' (spatial then temporal) or 'full' space-time (RaMViD)",
                             choices=("factorized", "full"))
    attention_position: str = _f("none", "positions in attention: 'none' (permuting frames permutes the output) or "
                                 "'rope' (axial rotary positions in time and space)", choices=("none", "rope"))
    conv_type: str = _f("3d", "residual-block convolutions: '3d' (3x3x3) or '2+1d' (3x3 in space, then 3 in time: "
                        "about half the compute)", choices=("3d", "2+1d"))
    patch_size: int = _f(1, "fold p x p pixel patches into channels: the UNet runs at 1/p resolution, ~p^2 cheaper")
    num_heads: int = _f(4, "attention heads")
    num_head_channels: int = _f(-1, "channels per head (overrides num_heads when > 0)")
    dropout: float = _f(0.0, "dropout rate in residual blocks")
    learn_sigma: bool = _f(False, "learn the reverse variance (doubles output channels; adds the VB loss)")
    use_scale_shift_norm: bool = _f(True, "timestep embedding as scale and shift of the norm (FiLM)")
    use_checkpoint: bool = _f(False, "gradient checkpointing: less memory, about 30% more compute")
    mask_input: bool = _f(True, "tell the network which frames are observed (False = RaMViD's unaware network)")
    given_frame_input: bool = _f(False, "also give every frame the nearest given frame as input channels "
                                        "(content to carry forward is at hand locally); needs --mask_input")
    given_frames: int = _f(1, "how many nearest given frames --given_frame_input gives every frame: 1, or 2 (the "
                              "second nearest too, so a motion between two given frames is visible at each "
                              "frame's own place)")
    given_correlation: int = _f(0, "r > 0: also give every frame a cost volume of its two nearest given frames "
                                   "(FlowNet's correlation of learned features) over displacements of up to r "
                                   "cells, (2r+1)^2 channels; needs --given_frame_input")
    kernel_head: int = _f(0, "r > 0: each generated frame's x_0 is a learned blend of its neighbour's x_0 moved by a "
                             "learned per-pixel kernel over displacements of up to r pixels and a frame the network "
                             "draws, built outwards from the given frames; needs --predict_xstart")
    kernel_copy: str = _f("gather", "how --kernel_head copies the neighbour: 'gather' (each pixel a kernel-weighted "
                                    "mean of the neighbour around it), 'scatter' (each neighbour pixel sent where its "
                                    "kernel says: a stroke's ink cannot be lost) or 'scatter_mean' (the same, what lands "
                                    "on one place averaged where more than one pixel's weight arrives)",
                           choices=("gather", "scatter", "scatter_mean"))
    kernel_motion: bool = _f(False, "--kernel_head's kernels are also given how the content of the frame they copy "
                                    "moved in the step before (the clean match of two given frames, or that frame's own "
                                    "kernels), through a learned map that starts at zero")
    kernel_motion_far: bool = _f(False, "with --kernel_motion: a chain that starts from a lone given frame, with "
                                        "another given frame further along its direction, is given the two frames' "
                                        "match divided by their distance as its motion state (zeros without it)")
    frame_levels: bool = _f(False, "embed a noise level per frame, given frames at level 0, instead of one per "
                                   "video (needed by --independent_noise_rate)")
    self_condition: bool = _f(False, "self-conditioning (Chen et al. 2022): the network also takes its previous "
                                     "estimate of x_0 as input; half the training videos get a first estimate of "
                                     "it, and each sampling step gets the last step's")
    norm: str = _f("group", "normalisation: 'group' (GroupNorm over the video) or 'channel' (across channels at "
                   "each pixel, which keeps a digit's colour)", choices=("group", "channel"))
    num_classes: int = _f(0, "class-conditional network over this many classes (set from the data by --class_cond)")


@dataclass
class DiffusionConfig:
    diffusion_steps: int = _f(1000, "number of diffusion timesteps T")
    noise_schedule: str = _f("linear", "beta schedule", choices=("linear", "cosine"))
    schedule_shift: float = _f(1.0, "divide the schedule's signal-to-noise ratio at every step by this squared: "
                                     "> 1 puts more steps, and more training draws of t, at high noise")
    timestep_respacing: str = _f("", "train/sample on a subset of steps: 'ddim50' or counts '250' / '10,20'")
    predict_xstart: bool = _f(False, "the network predicts x_0 instead of the noise")
    predict_v: bool = _f(False, "the network predicts v = sqrt(abar) eps - sqrt(1-abar) x_0")
    sigma_data: float = _f(0.0, "with --predict_xstart: EDM's preconditioning x_0 = c_skip x + c_out F "
                                "(x = x_t / sqrt(abar); near-clean inputs pass through) for data of this std, "
                                "e.g. 0.5; 0 = the network's output F is x_0")
    min_snr_gamma: float = _f(0.0, "Min-SNR-gamma loss weighting (e.g. 5); 0 = off")
    sigma_small: bool = _f(False, "fixed variance: posterior variance (True) or beta_t (False); ignored with learn_sigma")
    rescale_learned_sigmas: bool = _f(True, "loss 'rescaled MSE': scale the VB term by T/1000")
    schedule_sampler: str = _f("uniform", "timestep sampler", choices=("uniform", "loss-second-moment"))


@dataclass
class MaskConfig:
    max_num_mask_frames: int = _f(4, "K: each training video keeps k ~ U{1..K} random frames clean")
    mask_range: str = _f("", "'a,b': only frames a..b-1 may be kept; empty = all frames")
    uncondition_rate: float = _f(0.25, "p: probability that a training video keeps no frame")
    independent_noise_rate: float = _f(0.0, "probability that a training video's generated frames draw their noise "
                                            "levels independently (Diffusion Forcing) instead of sharing one; "
                                            "needs --frame_levels true")


@dataclass
class TrainConfig:
    log_dir: str = _f("", "run directory (logs, checkpoints); default runs/<preset or 'default'>")
    data_dir: str = _f("", "folder of training videos; empty = the embedded synthetic videos of --dataset")
    dataset: str = _f("digits", "the embedded videos used without --data_dir: 'digits' (coloured digits on black, "
                      "bouncing) or 'textures' (textured shapes over a drifting textured background)",
                      choices=("digits", "textures"))
    num_workers: int = _f(-1, "DataLoader worker processes; -1 = fit the machine")
    frame_stride: int = _f(1, "take every k-th frame of the source videos")
    class_cond: bool = _f(False, "class-conditional: labels from the file-name prefix before the first '_'")
    skip_bad_videos: bool = _f(False, "leave out (and count) unusable videos instead of stopping with an error")
    lr: float = _f(1e-4, "peak AdamW learning rate")
    lr_warmup_steps: int = _f(0, "linear warm-up steps from 0 to --lr")
    lr_anneal_steps: int = _f(0, "if > 0, lr decays linearly to 0 at this step")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    batch_size: int = _f(8, "videos per rank per step (global batch = batch_size x world size)")
    microbatch: int = _f(-1, "videos per forward pass (gradient accumulation); -1 = batch_size")
    ema_rate: str = _f("0.9999", "comma-separated EMA decay rates, e.g. '0.999,0.9999'")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this; 0 = off")
    precision: str = _f("fp32", "'fp32', or 'bf16' autocast", choices=("fp32", "bf16"))
    channels_last: bool = _f(True, "channels_last_3d memory layout for the 3D convolutions (faster on CPU and GPU)")
    compile: bool = _f(False, "torch.compile the network (slow first steps, faster after)")
    max_steps: int = _f(500_000, "stop after this many optimizer steps")
    log_interval: int = _f(100, "steps between log lines and progress.csv rows")
    save_interval: int = _f(10_000, "steps between checkpoints (one is always written at the end)")
    sample_interval: int = _f(0, "steps between previews: predictions of held-out videos written to <log_dir>/samples/ "
                                 "and their PSNR/SSIM to progress.csv; 0 = off")
    sample_videos: int = _f(4, "videos in each preview")
    sample_cond_frames: int = _f(2, "given frames of each preview prediction")
    sample_steps: int = _f(20, "network evaluations (DPM-Solver++(2M)) of each preview")
    keep_checkpoints: int = _f(3, "how many of the newest checkpoints to keep")
    resume_checkpoint: str = _f("", "resume from this checkpoint file (default: newest in --log_dir)")
    seed: int = _f(0, "global seed; per-video randomness is derived from it, the step and the video index")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: str = "the stored configuration") -> "Config":
        """
        The configuration stored by ``to_dict`` (a checkpoint's). A field that has since been
        removed (``REMOVED_FIELDS``) is dropped where it holds its old default, and refused
        otherwise: the weights were trained for something this code no longer builds.

        :param source: names the configuration's file in the error.
        """
        groups = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs = {}
        for name, value in d.items():
            if name not in groups:
                raise ValueError(f"{source}: unknown configuration group {name!r}")
            if name != "preset":
                value = dict(value)
                for field_name in [k for k in value if (name, k) in REMOVED_FIELDS]:
                    old_default, why = REMOVED_FIELDS[name, field_name]
                    if value.pop(field_name) != old_default:
                        raise ValueError(f"{source} sets --{field_name}, which was removed ({why}); "
                                         "this code cannot build that network")
                unknown = sorted(set(value) - {f.name for f in dataclasses.fields(_GROUP_TYPES[name])})
                if unknown:
                    raise ValueError(f"{source}: unknown {name} setting(s) {', '.join(unknown)} "
                                     "(written by a newer version of this code?)")
            kwargs[name] = value if name == "preset" else _GROUP_TYPES[name](**value)
        return cls(**kwargs)

    def flat(self) -> Dict[str, Any]:
        out = {}
        for group in _GROUP_TYPES:
            out.update(dataclasses.asdict(getattr(self, group)))
        return out


# Options that no longer exist, (group, name) -> (their default, why they went). A stored
# configuration that left one at its default loads; one that set it is refused by name.
_TRACKER_HEAD = "the warp head and its object tracker encoded the embedded digits' rules in the network"
REMOVED_FIELDS = {("model", "output_head"): ("direct", _TRACKER_HEAD), ("model", "warp_radius"): (3, _TRACKER_HEAD),
                  **{("model", name): (False, _TRACKER_HEAD) for name in
                     ("warp_input", "warp_gate", "warp_exact", "warp_deadzone", "warp_inside_cost", "warp_objects")},
                  ("model", "warp_verdict"): ("frame", _TRACKER_HEAD),
                  ("model", "given_frame_skip"): (False, "it lost on both datasets on the small curve, "
                                                         "docs/research_log.md"),
                  ("model", "attention_window"): (7, "it sized local attention's window, and local attention "
                                                     "lost on the small curve, docs/research_log.md"),
                  ("diffusion", "sigma_data_weight"): ("edm", "EDM's skip with the plain x_0 loss sampled noise at "
                                                             "the tiny budget, docs/research_log.md"),
                  ("model", "kernel_inertia"): (False, "a prior that content keeps its velocity is the embedded data's "
                                                       "constant-velocity rule in the network, docs/research_log.md")}

_GROUP_TYPES = {"model": ModelConfig, "diffusion": DiffusionConfig, "mask": MaskConfig, "train": TrainConfig}
_FIELD_GROUP = {f.name: g for g, t in _GROUP_TYPES.items() for f in dataclasses.fields(t)}


def apply_overrides(cfg: Config, overrides: Dict[str, Any]) -> Config:
    """Return a copy of ``cfg`` with flat field overrides applied (unknown names are an error)."""
    groups = {g: dataclasses.asdict(getattr(cfg, g)) for g in _GROUP_TYPES}
    for name, value in overrides.items():
        if name not in _FIELD_GROUP:
            raise ValueError(f"unknown configuration field {name!r}")
        groups[_FIELD_GROUP[name]][name] = value
    return Config(**{g: _GROUP_TYPES[g](**v) for g, v in groups.items()}, preset=cfg.preset)


def default_channel_mult(image_size: int) -> Sequence[int]:
    table = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}
    if image_size not in table:
        raise ValueError(f"--image_size {image_size} has no default --channel_mult; give one, e.g. '1,2,2'")
    return table[image_size]


def channel_mult_of(m: ModelConfig) -> Sequence[int]:
    return parse_int_list(m.channel_mult, "--channel_mult") if m.channel_mult else default_channel_mult(m.image_size)


def validate(cfg: Config, world_size: int = 1) -> None:
    """Raise ValueError naming the offending flag for any impossible combination."""
    m, d, mk, t = cfg.model, cfg.diffusion, cfg.mask, cfg.train
    positive = {"--image_size": m.image_size, "--seq_len": m.seq_len, "--num_channels": m.num_channels,
                "--num_res_blocks": m.num_res_blocks, "--num_heads": m.num_heads,
                "--diffusion_steps": d.diffusion_steps, "--batch_size": t.batch_size,
                "--max_steps": t.max_steps, "--log_interval": t.log_interval,
                "--save_interval": t.save_interval, "--keep_checkpoints": t.keep_checkpoints}
    for flag, value in positive.items():
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    _check_network(m, d)
    _check_training(m, mk, t)
    _check_frame_noise(m, d, mk)


def _check_network(m: ModelConfig, d: DiffusionConfig) -> None:
    """The network's shape and options, and the diffusion process they predict for."""
    mult = channel_mult_of(m)
    if not mult or min(mult) < 1:
        raise ValueError(f"--channel_mult must be positive integers, got {m.channel_mult!r}")
    if m.given_frame_input and not m.mask_input:
        raise ValueError("--given_frame_input needs --mask_input true: the network must know which frames are given")
    if m.given_frames not in (1, 2):
        raise ValueError(f"--given_frames must be 1 or 2, got {m.given_frames}")
    if m.given_frames == 2 and not m.given_frame_input:
        raise ValueError("--given_frames 2 needs --given_frame_input true (it is how many it gives)")
    if m.given_correlation < 0:
        raise ValueError(f"--given_correlation must be >= 0 (0 = none), got {m.given_correlation}")
    if m.given_correlation and not m.given_frame_input:
        raise ValueError("--given_correlation needs --given_frame_input true (it compares the given frames)")
    if m.kernel_head < 0:
        raise ValueError(f"--kernel_head must be >= 0 (0 = none), got {m.kernel_head}")
    if m.kernel_head and not (d.predict_xstart and d.sigma_data == 0 and not m.learn_sigma):
        raise ValueError("--kernel_head needs --predict_xstart true, --sigma_data 0 and --learn_sigma false: "
                         "the head builds x_0 itself")
    if m.kernel_motion and not m.kernel_head:
        raise ValueError("--kernel_motion needs --kernel_head r > 0 (it feeds the head's kernels)")
    if m.kernel_motion_far and not m.kernel_motion:
        raise ValueError("--kernel_motion_far needs --kernel_motion (it is a motion state for the learned map)")
    if m.patch_size < 1:
        raise ValueError(f"--patch_size must be >= 1, got {m.patch_size}")
    down = m.patch_size * 2 ** (len(mult) - 1)
    if m.image_size % down:
        raise ValueError(f"--image_size {m.image_size} must be divisible by {down}, the total downsampling of "
                         f"--patch_size {m.patch_size} and --channel_mult {','.join(map(str, mult))}")
    levels = [m.image_size // (m.patch_size * 2 ** i) for i in range(len(mult))]
    unreached = [r for r in parse_int_list(m.attention_resolutions, "--attention_resolutions") if r not in levels]
    if unreached:
        raise ValueError(f"--attention_resolutions {m.attention_resolutions}: the UNet never runs at "
                         f"{', '.join(map(str, unreached))} pixels; its levels are {', '.join(map(str, levels))} "
                         f"(--image_size / --patch_size / 2^level)")
    if m.attention_type not in ("factorized", "full"):
        why = (" ('local' was removed: level with its baseline at 4,000 videos at 1.9x the cost, and no motion "
               "learned, docs/research_log.md)") if m.attention_type == "local" else ""
        raise ValueError(f"--attention_type {m.attention_type!r}: 'factorized' or 'full'{why}")
    if not 0.0 <= m.dropout < 1.0:
        raise ValueError(f"--dropout must lie in [0, 1), got {m.dropout}")
    if d.predict_xstart and d.predict_v:
        raise ValueError("--predict_xstart and --predict_v are exclusive: pick one parameterisation")
    if d.sigma_data < 0:
        raise ValueError(f"--sigma_data must be >= 0 (0 = off), got {d.sigma_data}")
    if d.sigma_data > 0 and not d.predict_xstart:
        raise ValueError("--sigma_data needs --predict_xstart: the skip is written on the x_0 prediction")
    if d.min_snr_gamma < 0:
        raise ValueError(f"--min_snr_gamma must be >= 0 (0 = off), got {d.min_snr_gamma}")
    if not d.schedule_shift > 0:
        raise ValueError(f"--schedule_shift must be > 0 (1 = the schedule as named), got {d.schedule_shift}")
    from .diffusion.gaussian_diffusion import get_named_beta_schedule
    if get_named_beta_schedule(d.noise_schedule, d.diffusion_steps).max() >= 1:
        raise ValueError(f"--diffusion_steps {d.diffusion_steps} is too few for the {d.noise_schedule} schedule "
                         "(beta reaches 1); use more steps or --noise_schedule cosine")
    if d.timestep_respacing:
        import numpy as np

        from .diffusion.respace import space_timesteps
        space_timesteps(d.diffusion_steps, d.timestep_respacing,
                        np.cumprod(1.0 - get_named_beta_schedule(d.noise_schedule, d.diffusion_steps,
                                                                 d.schedule_shift)))


def _check_training(m: ModelConfig, mk: MaskConfig, t: TrainConfig) -> None:
    """The frame masks, the optimisation, the previews and the run directory."""
    check_mask_config(m.seq_len, mk.max_num_mask_frames, parse_mask_range(mk.mask_range, m.seq_len),
                      mk.uncondition_rate)
    if t.microbatch != -1 and not 1 <= t.microbatch <= t.batch_size:
        raise ValueError(f"--microbatch must be -1 or in [1, --batch_size={t.batch_size}], got {t.microbatch}")
    if t.microbatch > 0 and t.batch_size % t.microbatch:
        raise ValueError(f"--batch_size {t.batch_size} is not divisible by --microbatch {t.microbatch}")
    rates = parse_float_list(t.ema_rate, "--ema_rate")
    if any(not 0.0 < r < 1.0 for r in rates):
        raise ValueError(f"--ema_rate values must lie in (0, 1), got {t.ema_rate!r}")
    if t.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {t.lr}")
    if t.lr_warmup_steps < 0 or t.lr_anneal_steps < 0:
        raise ValueError("--lr_warmup_steps and --lr_anneal_steps must be >= 0")
    if t.sample_interval < 0:
        raise ValueError(f"--sample_interval must be >= 0 (0 = no previews), got {t.sample_interval}")
    if t.sample_interval and not 0 < t.sample_cond_frames < m.seq_len:
        raise ValueError(f"--sample_cond_frames must be in [1, --seq_len {m.seq_len}), got {t.sample_cond_frames}")
    if t.sample_videos < 1 or t.sample_steps < 1:
        raise ValueError("--sample_videos and --sample_steps must be >= 1")
    if t.data_dir and t.dataset != "digits":
        raise ValueError(f"--dataset {t.dataset} names an embedded dataset; it cannot be combined with --data_dir")
    if t.grad_clip < 0:
        raise ValueError(f"--grad_clip must be >= 0, got {t.grad_clip}")
    if t.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {t.seed}")
    if t.log_dir:
        check_output_folder(t.log_dir, "--log_dir")


def _check_frame_noise(m: ModelConfig, d: DiffusionConfig, mk: MaskConfig) -> None:
    """Per-frame noise levels: the network must embed them, and the loss must be a plain mean over frames."""
    if not 0.0 <= mk.independent_noise_rate <= 1.0:
        raise ValueError(f"--independent_noise_rate must lie in [0, 1], got {mk.independent_noise_rate}")
    if mk.independent_noise_rate > 0:
        if not m.frame_levels:
            raise ValueError("--independent_noise_rate needs --frame_levels true: a network with one noise level "
                             "per video cannot tell its frames' levels apart")
        # each of these weights or draws a whole video's loss by its one timestep
        clashes = {"--learn_sigma": m.learn_sigma, "--min_snr_gamma": d.min_snr_gamma > 0,
                   "--sigma_data": d.sigma_data > 0, "--schedule_sampler loss-second-moment":
                   d.schedule_sampler != "uniform"}
        named = [k for k, v in clashes.items() if v]
        if named:
            raise ValueError(f"--independent_noise_rate cannot be combined with {', '.join(named)} (they weight or "
                             "draw a video's loss by one timestep)")


# ---------------------------------------------------------------------- comparing configurations
# Fields that name where a run is, not what it trains: never reported as changed on resume.
LOCATION_FIELDS = ("log_dir", "resume_checkpoint")
# Diffusion fields the weights do not depend on (how timesteps are drawn and weighted).
_NOT_IN_WEIGHTS = ("timestep_respacing", "schedule_sampler", "min_snr_gamma")


def config_differences(a: Dict[str, Any], b: Dict[str, Any], ignore: Sequence[str] = LOCATION_FIELDS,
                       only: Optional[Sequence[str]] = None) -> Dict[str, tuple]:
    """
    field -> (value in a, value in b) for every field that differs between two stored
    configurations (``Config.to_dict``; flat over the groups, in field order).

    :param ignore: fields never compared.
    :param only: compare these fields alone.
    """
    def flat(cfg):
        out = {}
        for group, values in cfg.items():
            out.update(values if isinstance(values, dict) else {group: values})
        return out

    fa, fb = flat(a), flat(b)
    names = list(fb) + [k for k in fa if k not in fb]
    return {k: (fa.get(k), fb.get(k)) for k in names
            if k not in ignore and (only is None or k in only) and fa.get(k) != fb.get(k)}


def weight_fields() -> tuple:
    """The configuration fields the weights depend on: the model's, and the diffusion's that shape the output."""
    return tuple(f.name for f in dataclasses.fields(ModelConfig)) + tuple(
        f.name for f in dataclasses.fields(DiffusionConfig) if f.name not in _NOT_IN_WEIGHTS)


def check_resumable(stored: Config, cfg: Config, path) -> List[str]:
    """
    Raise if the weights in checkpoint ``path`` (trained with ``stored``) cannot serve ``cfg``;
    otherwise '--flag: old -> new' for every other setting that changed.
    """
    a, b = stored.to_dict(), cfg.to_dict()
    shape = config_differences(a, b, only=weight_fields())
    if shape:
        diffs = [f"--{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in shape.items()]
        raise ValueError(f"cannot resume from {path}: model settings differ ({'; '.join(diffs)}). "
                         "Use a new --log_dir or the checkpoint's settings.")
    return [f"--{k}: {old!r} -> {new!r}" for k, (old, new) in config_differences(a, b).items()]


# ---------------------------------------------------------------------- command line
def add_config_flags(parser: argparse.ArgumentParser, groups: Sequence[str] = tuple(_GROUP_TYPES),
                     with_preset: bool = True, exclude: Sequence[str] = ()) -> None:
    """Add one flag per configuration field (but ``exclude``). Defaults are suppressed so that only
    given flags override."""
    if with_preset:
        listing = "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items())
                            for name, values in PRESETS.items())
        parser.add_argument("--preset", default=argparse.SUPPRESS, choices=sorted(PRESETS),
                            help=f"named configuration; explicit flags override it ({listing})".replace("%", "%%"))
    for group in groups:
        add_dataclass_flags(parser.add_argument_group(group), _GROUP_TYPES[group], exclude,
                            default=lambda f: argparse.SUPPRESS,
                            help_note=lambda f: "".join(f"; {name}: {values[f.name]!r}" for name, values in PRESETS.items()
                                                        if f.name in values) if with_preset else "")


def describe_config(cfg: Config, given: Dict[str, Any], resumed_from: Optional[str] = None) -> str:
    """
    Every field of ``cfg`` with its value and where the value comes from: a flag given
    now, the preset, the checkpoint being resumed, or the default.
    """
    preset = PRESETS.get(cfg.preset, {})
    defaults = Config().flat()
    lines = []
    for group, group_type in _GROUP_TYPES.items():
        lines.append(f"[{group}]")
        for f in dataclasses.fields(group_type):
            value = getattr(getattr(cfg, group), f.name)
            if f.name in given:
                source = "flag"
            elif resumed_from and value != preset.get(f.name, defaults[f.name]):
                source = f"checkpoint {resumed_from}"
            elif f.name in preset:
                source = f"preset {cfg.preset}"
            else:
                source = "default"
            lines.append(f"  --{f.name} {value!r}  ({source})")
    return "\n".join(lines)


def given_fields(args: argparse.Namespace, groups: Sequence[str] = tuple(_GROUP_TYPES)) -> Dict[str, Any]:
    """The configuration fields of ``groups`` given explicitly on the command line."""
    return {k: v for k, v in vars(args).items() if _FIELD_GROUP.get(k) in groups}


def config_from_args(args: argparse.Namespace, base: Optional[Config] = None) -> Config:
    """Defaults (or ``base``), then the preset, then explicitly given flags."""
    given = given_fields(args)
    preset = getattr(args, "preset", None)
    cfg = base or Config()
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {preset!r}")
        cfg = apply_overrides(cfg, PRESETS[preset])
        cfg.preset = preset
    return apply_overrides(cfg, given)
