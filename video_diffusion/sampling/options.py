"""
What a user asks of a sampling run, declared once (``SampleOptions``): the scripts' flags
are generated from it, and ``plan.resolve_plan`` turns it into what the run does.
"""

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

from ..flags import add_dataclass_flags, str2bool
from .samplers import DEFAULT_SAMPLER, GRIDS, SAMPLERS
from .denoiser import CONDITIONINGS

TASKS = ("prediction", "infill", "generation")


def _opt(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class SampleOptions:
    """What to sample and how. Declared once: the scripts' flags are generated from it."""
    task: str = _opt("prediction", "what the given frames are", choices=TASKS)
    num_cond_frames: int = _opt(1, "prediction: the first c frames are given")
    cond_frames: str = _opt("", "infill: the given frame indices, e.g. '0,7'")
    num_samples: int = _opt(8, "test videos to sample (generation: videos); 0 = one per test video, every "
                               "video exactly once across ranks")
    samples_per_video: int = _opt(1, "samples drawn for each test video (best-of-k figures need k > 1)")
    batch_size: int = _opt(8, "videos per forward pass per rank")
    seed: int = _opt(0, "sample s of video v draws its noise from the seed (seed, v, s)")
    sampler: str = _opt(DEFAULT_SAMPLER, "; ".join(f"'{k}': {v.help}" for k, v in SAMPLERS.items()),
                        choices=tuple(SAMPLERS))
    steps: int = _opt(-1, "network evaluations per window: -1 = the sampler's default ("
                          + ", ".join(f"{k}: {v.default_evaluations or 'all diffusion steps'}" for k, v in SAMPLERS.items())
                          + "), 0 = all diffusion steps")
    grid: str = _opt("auto", "where the steps lie: 'uniform' in t (DDIM's strides for ddim), 'karras' "
                             "(Karras et al.'s sigma spacing, dense at low noise), 'logsnr' (even in log-SNR, "
                             "DPM-Solver's step variable) or 'auto', the sampler's own ("
                             + ", ".join(f"{k}: {v.default_grid}" for k, v in SAMPLERS.items()) + ")",
                     choices=("auto",) + GRIDS)
    eta: float = _opt(0.0, "DDIM noise scale (0 = deterministic)")
    precision: str = _opt("fp32", "'fp32', or 'bf16' autocast of the network (GPU: about twice as fast)",
                          choices=("fp32", "bf16"))
    conditioning: str = _opt("auto", "how given frames condition: 'mask' (trained with the frame mask), "
                                     "'replacement' (RaMViD's baseline for unconditional models); 'auto' picks "
                                     "from the training configuration", choices=("auto",) + CONDITIONINGS)
    resample_steps: int = _opt(1, "replacement: repeat each step R times with re-noising (1 = plain replacement)")
    guidance_scale: float = _opt(1.0, "frame guidance w: uncond + w (cond - uncond); 1 = none")
    num_frames: int = _opt(0, "frames per video L; beyond the model's window the video is rolled out window "
                              "by window (0 = the window)")
    context_frames: int = _opt(0, "rollout: frames each new window is conditioned on (0 = half the window, at most "
                                  "the K frames training kept)")
    data_dir: str = _opt("", "videos giving the given frames and ground truth (default: held-out embedded videos)")
    deterministic: str = _opt("first", "test windows from --data_dir: the first of each video, or every "
                                       "non-overlapping one", choices=("first", "all"))
    skip_bad_videos: bool = _opt(False, "leave out unusable test videos (each named, and counted in the output) "
                                        "instead of stopping; never taken from the training configuration")


def add_sample_flags(parser, exclude: Sequence[str] = (), **defaults) -> None:
    """
    One flag per SampleOptions field (``exclude`` leaves some out, ``defaults`` changes
    the default shown and used, e.g. for a protocol script).
    """
    add_dataclass_flags(parser.add_argument_group("sampling"), SampleOptions, exclude,
                        default=lambda f: defaults.get(f.name, f.default))


def add_checkpoint_flags(parser: argparse.ArgumentParser, out_dir: str) -> None:
    """The flags every script that samples from a checkpoint shares: which weights, and where runs go."""
    parser.add_argument("--model_path", required=True, help="checkpoint written by video_train.py")
    parser.add_argument("--out_dir", default=out_dir,
                        help=f"parent folder; each run writes into a new <out_dir>/<NNN>_<task>/ (default: {out_dir})")
    parser.add_argument("--use_ema", type=str2bool, nargs="?", const=True, default=None,
                        help="use the EMA weights (default: yes when the checkpoint has them)")
    parser.add_argument("--ema_rate", default=None, help="which stored EMA rate (default: the largest)")


def sample_options_from(args, **fixed) -> SampleOptions:
    """SampleOptions from parsed flags; ``fixed`` sets fields that a script does not expose."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SampleOptions) if hasattr(args, f.name)}
    return SampleOptions(**{**values, **fixed})
