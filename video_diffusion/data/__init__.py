"""
Training data. A dataset is any map-style ``torch.utils.data.Dataset`` whose items are
dicts holding ``video``: float [C, T, H, W] in [-1, 1] (plus ``y`` labels for a
class-conditional model). During training ``__getitem__`` receives ``(index, seed)``:
the seed, drawn per video and step by the batch sampler, decides anything random about
the item (e.g. which window of a long video), so data never depends on worker processes.
"""

import os

import torch

from ..signals import ignore_stop_signals, kill_workers_at_exit
from .folder import VideoFolder
from ..seeds import seed_of
from .sampler import TrainBatchSampler, eval_shard
from .synthetic import MovingDigits
from .textures import MovingTextures
from .video_io import BadVideo

__all__ = ["MovingDigits", "MovingTextures", "VideoFolder", "BadVideo", "TrainBatchSampler", "eval_shard", "seed_of",
           "create_dataset", "embedded_digits", "data_source", "train_loader", "resolve_num_workers"]


def create_dataset(cfg, data_dir=None, seq_len=None, windows="random", seed_offset=0, skip_bad=None):
    """
    A dataset for the configuration: the video folder ``data_dir`` (default --data_dir), or
    the embedded videos of --dataset (moving digits or moving textures) when there is none: the training videos follow --seed, and a
    nonzero ``seed_offset`` picks another set that is the same for every --seed (the held-out
    videos of sampling and evaluation), so runs trained with different seeds are scored on the
    same videos. ``skip_bad`` None = the training flag --skip_bad_videos.
    """
    m, t = cfg.model, cfg.train
    data_dir = t.data_dir if data_dir is None else data_dir
    seq_len = seq_len or m.seq_len
    channels = 3 if m.rgb else 1
    if data_dir:
        return VideoFolder(data_dir, m.image_size, seq_len, channels, frame_stride=t.frame_stride, windows=windows,
                           class_cond=t.class_cond, skip_bad=t.skip_bad_videos if skip_bad is None else skip_bad)
    if t.class_cond:
        raise ValueError("--class_cond needs --data_dir (labels come from file-name prefixes)")
    # seed_of(0, offset) is what seed 0 drew before the held-out set was made independent of
    # --seed, so the figures measured on seed 0 still stand.
    seed = seed_of(0, seed_offset) if seed_offset else t.seed
    if t.dataset == "textures":
        return MovingTextures(m.image_size, seq_len, channels=channels, seed=seed)
    return MovingDigits(m.image_size, seq_len, channels=channels, seed=seed)


def embedded_digits(cfg) -> bool:
    """Whether the configuration trains on the embedded moving digits (where the perfect model
    and the object tracker are known baselines)."""
    return not cfg.train.data_dir and cfg.train.dataset == "digits"


def data_source(cfg) -> str:
    """Where the training videos come from, in words."""
    return cfg.train.data_dir or f"the embedded moving-{cfg.train.dataset} generator"


def resolve_num_workers(requested: int, local_world_size: int = 1) -> int:
    """-1 means: the cores this rank can have, leaving one for the training thread, at most 4."""
    if requested >= 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores // max(1, local_world_size) - 1))


def train_loader(dataset, batch_size: int, rank: int, world_size: int, seed: int, start_step: int,
                 num_workers: int, pin_memory: bool = False):
    """An infinite iterator over this rank's batches, starting at ``start_step``."""
    sampler = TrainBatchSampler(len(dataset), batch_size, rank, world_size, seed, start_step)
    if num_workers > 0:
        kill_workers_at_exit()
    # An explicit generator keeps the DataLoader from drawing its worker seed from the
    # global RNG, which would shift the dropout stream of a resumed run.
    return iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                            pin_memory=pin_memory, persistent_workers=num_workers > 0,
                                            worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
                                            generator=torch.Generator().manual_seed(seed)))
