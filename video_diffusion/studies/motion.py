"""
How fast a network can learn to read a motion, asked directly.

Motion use (``evaluation/curve.py:x0_from_noise``) asks a trained diffusion model one question:
from pure noise and the first two frames of a video, how much better is its x_0 of the later
frames than from the last of those frames alone? A diffusion training asks that question only
in the draws where the noise is high and two neighbouring frames are given, a small part of
them. This study asks it in every draw: the network of a configuration, trained on nothing
but x_0 from the last timestep with the first ``num_given`` frames given, scored by the same
function on the same held-out videos as the learning curve. It separates what an architecture
can learn from what a diffusion training spends on it: a network that learns no motion here
will not learn it in the diffusion training either, at any mix of noise levels and masks.

It is a diagnostic, not a way to train a model: the network it trains is thrown away.
``scripts/motion_probe.py`` is its command line.
"""

import time
from typing import Callable, Dict, List

import torch

from ..build import create_diffusion, create_model
from ..data import create_dataset
from ..evaluation.curve import x0_from_noise
from ..training.loop import lr_at


def focused_motion_training(cfg, steps: int, eval_every: int, num_videos: int = 32, num_given: int = 2,
                            seed: int = 0, log: Callable[[str], None] = print) -> List[Dict]:
    """
    Train ``create_model(cfg)`` on x_0 from the last timestep with the first ``num_given`` frames
    of each training video given (batch, lr and warm-up from the configuration, AdamW, no EMA),
    and score it every ``eval_every`` steps (and at step 0) with ``x0_from_noise``.

    :param cfg: a validated configuration whose network predicts x_0 (``--predict_xstart``).
    :param steps: optimiser steps.
    :param eval_every: steps between scores.
    :param num_videos: held-out videos per score.
    :param num_given: frames given at the start of every video.
    :param seed: the seed of the network's initialisation and of the training draws.
    :param log: receives one line per score.
    :return: one dict per score: step, videos, seconds, loss (the mean training loss since the
        last score), model (x_0 error per predicted frame), last_given_only, motion_use.
    """
    if not cfg.diffusion.predict_xstart:
        raise ValueError("the motion probe trains the network's x_0 directly: it needs --predict_xstart true")
    if not 1 < num_given < cfg.model.seq_len:
        raise ValueError(f"num_given must be at least 2 (a motion needs two frames) and below --seq_len "
                         f"{cfg.model.seq_len}, got {num_given}")
    if steps < 1 or eval_every < 1:
        raise ValueError(f"steps and eval_every must be >= 1, got {steps} and {eval_every}")
    torch.manual_seed(seed)
    model = create_model(cfg)
    diffusion = create_diffusion(cfg, timestep_respacing="")
    data = create_dataset(cfg)
    batch, frames = cfg.train.batch_size, cfg.model.seq_len
    last = torch.full((batch,), diffusion.num_timesteps - 1)
    mask = torch.zeros(batch, frames)
    mask[:, :num_given] = 1
    observed = mask[:, None, :, None, None].bool()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    rows, losses, start = [], [], time.perf_counter()

    def score(step):
        model.eval()
        with torch.no_grad():
            x0 = x0_from_noise(cfg, model, num_videos, num_given)
        model.train()
        row = {"step": step, "videos": step * batch, "seconds": time.perf_counter() - start,
               "loss": sum(losses) / len(losses) if losses else None, "model": x0["model"],
               "last_given_only": x0["last_given_only"], "motion_use": x0["motion_use"]}
        losses.clear()
        rows.append(row)
        log(f"step {step} ({row['videos']:,} videos): x_0 error from noise {sum(row['model']) / len(row['model']):.4f}"
            f" (first predicted frame {row['model'][0]:.4f}), with the last given frame alone "
            f"{sum(row['last_given_only']) / len(row['last_given_only']):.4f}; motion use {row['motion_use']:+.4f}")

    score(0)
    for step in range(1, steps + 1):
        index = torch.randint(len(data), (batch,), generator=gen)
        video = torch.stack([data[int(i)]["video"] for i in index])
        noisy = torch.where(observed, video, diffusion.q_sample(video, last, torch.randn(video.shape, generator=gen)))
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, cfg.train.lr, cfg.train.lr_warmup_steps, 0)
        x0 = diffusion.split_model_output(model(noisy, diffusion.model_timesteps(last), obs_mask=mask), video.shape[1])[0]
        loss = (x0 - video)[:, :, num_given:].square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            score(step)
    return rows
