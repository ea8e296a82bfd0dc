"""
From the command line to a ready ``TrainLoop``: the configuration (flags over the preset
over the resumed checkpoint's), the checkpoint to resume from, and the model, process and
data assembled.
"""

from typing import Optional

import torch

from ..build import create_diffusion, create_model
from ..config import Config, apply_overrides, config_from_args, validate
from ..data import create_dataset, data_source, resolve_num_workers, train_loader
from ..distributed import DistContext
from ..seeds import seed_of
from ..checkpoints import ResumePoint, find_resume_point
from .logger import RunLogger
from .loop import TrainLoop
from .previews import Previews


def find_resume(cfg: Config) -> Optional[ResumePoint]:
    """The checkpoint a run resumes from (see ``checkpoint.find_resume_point``); None = a fresh run."""
    return find_resume_point(cfg.train.log_dir, cfg.train.resume_checkpoint)


def resolve_train_config(args):
    """
    Command-line flags -> (config, resume). Without --log_dir the run directory is
    runs/<preset or 'default'>. When the run directory holds checkpoints (or
    --resume_checkpoint is given), the checkpoint's stored configuration is the base and
    the flags given now override it, so a bare ``--log_dir RUN`` continues a run.
    """
    cfg = config_from_args(args)
    if not cfg.train.log_dir:
        cfg = apply_overrides(cfg, {"log_dir": f"runs/{cfg.preset or 'default'}"})
    resume = find_resume(cfg)
    if resume is not None:
        stored = Config.from_dict(resume.state["config"])
        stored = apply_overrides(stored, {"log_dir": cfg.train.log_dir,
                                          "resume_checkpoint": cfg.train.resume_checkpoint})
        preset = cfg.preset
        cfg = config_from_args(args, base=stored)
        cfg.preset = preset or stored.preset
    validate(cfg)
    return cfg, resume


def build_train_loop(cfg: Config, ctx: DistContext, logger: RunLogger, resume=None, dataset=None) -> TrainLoop:
    """Model, diffusion process and data of a configuration, assembled into a TrainLoop."""
    dataset = dataset if dataset is not None else create_dataset(cfg)
    logger.info(f"data: {len(dataset)} videos from {data_source(cfg)}")
    for path, reason in getattr(dataset, "skipped", []):
        logger.info(f"skipped {path}: {reason}")
    if getattr(dataset, "skipped", None):
        logger.info(f"--skip_bad_videos: {len(dataset.skipped)} unusable videos left out")
    if cfg.train.class_cond:
        cfg = apply_overrides(cfg, {"num_classes": len(dataset.classes)})
        logger.info(f"class-conditional over {len(dataset.classes)} classes: {', '.join(dataset.classes[:10])}")
    workers = resolve_num_workers(cfg.train.num_workers, ctx.local_world_size)

    def data(start_step):
        return train_loader(dataset, cfg.train.batch_size, ctx.rank, ctx.world_size, cfg.train.seed, start_step,
                            workers, pin_memory=ctx.device.type == "cuda")

    # Initial weights are a function of --seed alone (identical on every rank and in every run).
    torch.manual_seed(seed_of(cfg.train.seed, 0x1417))
    model = create_model(cfg)
    fingerprint = dataset.fingerprint() if hasattr(dataset, "fingerprint") else {}
    # previews: the main rank samples them; built here so the loop only calls them
    previews = Previews(cfg, ctx.device) if cfg.train.sample_interval and ctx.is_main else None
    return TrainLoop(cfg, ctx, model, create_diffusion(cfg), data, logger, resume=resume,
                     data_fingerprint=fingerprint, previews=previews)
