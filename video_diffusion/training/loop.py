"""
The training loop: masked-conditional diffusion training with AdamW, EMA, gradient
accumulation, bf16 autocast, DDP on CPU and GPU, checkpoints and automatic resume, and
previews at --sample_interval (sampled by a ``Previews`` the set-up hands it).

Reproducibility: the randomness of video j of the global batch at step s (its frame
mask, timestep and noise) comes from a generator seeded by (seed, s, j). The same
global batch therefore trains the same way on 1 rank or 8, and a resumed run repeats
exactly what an uninterrupted run would have done.

The loop is wiring. Its parts own their state (``state_dict``/``load_state_dict``):
the network and optimizer, the ``EMA`` (``ema``), the timestep sampler
(``diffusion.timestep_sampler``), the statistics (``stats``), the per-video randomness
(``diffusion.masks.training_randomness``), the checkpoint files and their lineage
(``video_diffusion.checkpoints``), and stop signals (``preemption``).
"""

import contextlib
import math
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import distributed
from ..checkpoints import ResumePoint, fingerprint_changes, prepare_run_dir, save_checkpoint
from ..config import Config, check_resumable
from ..flags import parse_float_list
from ..seeds import rng_state, seed_process_rng, set_rng_state
from ..distributed import DistContext
from .ema import EMA
from ..diffusion.gaussian_diffusion import GaussianDiffusion
from .logger import RunLogger
from ..diffusion.masks import parse_mask_range, training_randomness
from ..models.nn import to_channels_last
from .preemption import Preempted, StopRequests
from ..diffusion.timestep_sampler import LossSecondMomentResampler, create_timestep_sampler
from .stats import StepStats, WindowStats

MAX_BAD_STEPS = 10
# The share of videos a self-conditioned network is trained on its own first estimate (Chen et
# al. 2022's one half): the rest teach it to estimate from nothing, which the sampler's first step
# and every diagnostic that calls the network once still ask of it.
SELF_CONDITION_RATE = 0.5

# What a checkpoint holds besides the configuration, the RNG states and the run's metadata:
# checkpoint key -> the TrainLoop attribute that owns it (state_dict / load_state_dict).
# Saving and resuming both go through this one table.
STATE_PARTS = {"model": "model", "ema": "ema", "optimizer": "opt", "schedule_sampler": "schedule_sampler"}


def _cpu_fused_adamw() -> bool:
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 4)


class TrainingDiverged(RuntimeError):
    """Raised after MAX_BAD_STEPS consecutive steps with a non-finite loss or gradient."""


class DataFailure(RuntimeError):
    """The training data could not be read mid-run (a worker died, a file became unreadable)."""


def lr_at(step: int, lr: float, warmup_steps: int, anneal_steps: int) -> float:
    """Learning rate for the optimizer step ``step`` (0-based): linear warm-up, then optional linear decay."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if anneal_steps:
        factor *= max(0.0, 1.0 - step / anneal_steps)
    return lr * factor


class TrainLoop:
    """
    :param cfg: the full configuration (stored in every checkpoint).
    :param ctx: this rank's distributed context.
    :param model: the network (moved to ctx.device here).
    :param diffusion: the diffusion process; the network is passed to it at every call.
    :param data: a function ``start_step -> iterator`` of this rank's batches (dicts with ``video``).
    :param logger: the run logger (a no-op on non-main ranks).
    :param resume: the ``ResumePoint`` from ``find_resume``; None = fresh.
    :param data_fingerprint: what identifies the training data (stored; compared on resume).
    :param previews: on the main rank, a callable ``(weights, step) -> dict`` that samples and
        writes a preview (``previews.Previews``); None = no pictures on this rank (the others
        still meet the main rank at a barrier every --sample_interval steps).
    """

    def __init__(self, cfg: Config, ctx: DistContext, model: torch.nn.Module, diffusion: GaussianDiffusion,
                 data, logger: RunLogger, resume: Optional[ResumePoint] = None, data_fingerprint: Dict = None,
                 previews=None):
        self.cfg, self.ctx, self.diffusion, self.logger = cfg, ctx, diffusion, logger
        t = cfg.train
        self.run_dir = Path(t.log_dir)
        self.batch_size = t.batch_size
        self.microbatch = t.microbatch if t.microbatch > 0 else t.batch_size
        self.global_batch = t.batch_size * ctx.world_size
        self.mask_range = parse_mask_range(cfg.mask.mask_range, cfg.model.seq_len)
        self.autocast = dict(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16")
        self.data_fingerprint = data_fingerprint or {}
        seed_process_rng(t.seed, ctx.rank)

        self.model = model.to(ctx.device)
        if t.channels_last:
            self.model = to_channels_last(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ddp = (DDP(self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
                    if ctx.distributed else None)
        # the network as the loss calls it: DDP-wrapped across ranks, compiled on request
        self.forward_model = self.ddp or self.model
        if t.compile:
            self.forward_model = torch.compile(self.forward_model)
        # Fused AdamW (GPU; CPU from torch 2.4) can skip a non-finite step on the device.
        self.fused_adamw = ctx.device.type == "cuda" or _cpu_fused_adamw()
        self.opt = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay, fused=self.fused_adamw)
        # Fused AdamW reads two attributes that torch.amp.GradScaler usually sets: grad_scale
        # (None: the gradients are not scaled) and found_inf, set per step in _optimizer_step.
        self.opt.grad_scale = None
        self.ema = EMA(self.model, parse_float_list(t.ema_rate, "--ema_rate"))
        self.schedule_sampler = create_timestep_sampler(cfg.diffusion.schedule_sampler, diffusion.num_timesteps)
        self.window = WindowStats(ctx.device)
        self.stop = StopRequests()
        # the all-reduced stop votes of the last step and of the one before (read one step late: no stall)
        self._stop_vote = self._lagged_stop_vote = None
        # previews are sampled by the main rank only; every rank meets it at a barrier after
        self.previews = previews
        self._previewed_step = -1
        self.step = 0
        self.lineage = {"forked_from": "", "forked_at": 0}
        self._prepare_run_dir(resume)
        if resume is not None:
            self._resume(resume)
        self._reset_log_window()
        self.data: Iterator = data(self.step)

    # ------------------------------------------------------------------ state
    @property
    def ema_rates(self) -> List[float]:
        return self.ema.rates

    def ema_weights(self, rate: float, device="cpu") -> Dict[str, torch.Tensor]:
        """A state dict of the network with the EMA weights of ``rate``."""
        return self.ema.weights(rate, device)

    def state(self, rng_states: List[Dict]) -> Dict:
        """The complete training state: the parts of ``STATE_PARTS``, the configuration, every rank's
        RNG states, the world size, the data's fingerprint and the run's lineage."""
        return {"config": self.cfg.to_dict(),
                **{key: getattr(self, attr).state_dict() for key, attr in STATE_PARTS.items()},
                "rng": rng_states, "world_size": self.ctx.world_size, "data": self.data_fingerprint,
                "lineage": self.lineage}

    def save(self) -> None:
        """Write a checkpoint. Every rank calls this (the RNG states are gathered); rank 0 writes, and
        every rank learns whether it worked (a failed write stops all of them with the same error)."""
        rng_states = distributed.all_gather_object(self.ctx, rng_state(self.ctx.device))
        error = ""
        if self.ctx.is_main:
            try:
                path = save_checkpoint(self.run_dir, self.step, self.state(rng_states),
                                       keep=self.cfg.train.keep_checkpoints)
                self.logger.info(f"saved {path}")
            except OSError as e:
                error = str(e)
        error = distributed.all_gather_object(self.ctx, error)[0]
        if error:
            raise OSError(error)

    def _prepare_run_dir(self, resume: Optional[ResumePoint]) -> None:
        if self.ctx.is_main:
            prepare_run_dir(self.run_dir, resume, self.logger.info)
        distributed.barrier(self.ctx)

    def _resume(self, resume: ResumePoint) -> None:
        path, state = resume.path, resume.state
        changes = check_resumable(Config.from_dict(state["config"]), self.cfg, path)
        if changes:
            self.logger.info(f"resuming with {len(changes)} changed setting(s): {'; '.join(changes)}")
        data_changes = fingerprint_changes(state.get("data") or {}, self.data_fingerprint)
        if data_changes:
            self.logger.info(f"warning: the training data differs from the checkpoint's ({'; '.join(data_changes)})")
        loaded = {key: getattr(self, attr).load_state_dict(state[key]) for key, attr in STATE_PARTS.items()}
        for group in self.opt.param_groups:  # the stored groups carry the writer's implementation flags
            group["fused"], group["foreach"] = self.fused_adamw, None if self.fused_adamw else group.get("foreach")
        for rate in loaded["ema"]:
            self.logger.info(f"EMA rate {rate} is new in this run: it starts from the current weights")
        self.step = resume.step
        explicit = self.cfg.train.resume_checkpoint
        rollback = explicit and not resume.continued_branch
        self.lineage = ({"forked_from": str(Path(explicit).resolve()), "forked_at": self.step} if rollback
                        else resume.lineage())
        if state["world_size"] == self.ctx.world_size:
            set_rng_state(state["rng"][self.ctx.rank], self.ctx.device)
        else:
            self.logger.info(f"world size changed ({state['world_size']} -> {self.ctx.world_size}): process RNG "
                             "(dropout) re-seeded; masks, timesteps and noise depend only on (seed, step, index)")
        how = " (continuing the branch forked from --resume_checkpoint)" if resume.continued_branch else ""
        self.logger.info(f"resumed from {path} at step {self.step}{how}")

    # ------------------------------------------------------------------ one step
    def run_step(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """
        One optimizer step on this rank's batch (any size; microbatches weighted by their size).

        :return: a boolean tensor on the device: True if the step was applied, False if it
            was skipped as non-finite (reading it on the host costs a sync).
        """
        x = batch["video"].to(self.ctx.device, non_blocking=True)
        if x.ndim != 5 or x.shape[2] != self.cfg.model.seq_len:
            raise ValueError(f"expected a video batch [N, C, {self.cfg.model.seq_len}, H, W], got {tuple(x.shape)}")
        m = self.cfg.mask
        masks, t, weights, noise, self_cond = training_randomness(
            self.cfg.train.seed, self.step, self.ctx.rank * self.batch_size, x.shape, self.cfg.model.seq_len,
            m.max_num_mask_frames, m.uncondition_rate, self.mask_range, self.schedule_sampler, x.device,
            m.independent_noise_rate, SELF_CONDITION_RATE if self.cfg.model.self_condition else 0.0)
        stats = StepStats(x.device)
        losses = self._backward(x, batch, masks, t, weights, noise, self_cond, stats)
        self._update_timestep_sampler(t, losses)
        max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        stats.vote_stop(self.stop.requested)
        distributed.all_reduce_sum(self.ctx, stats.vector)
        # Gradients are identical on all ranks after DDP's all-reduce and the stats are summed,
        # so every rank reaches the same verdict; it stays on the device (no host sync).
        applied = torch.isfinite(grad_norm) & stats.finite()
        self._optimizer_step(applied)
        self.ema.update(applied, self.step)
        self.window.record(stats, grad_norm, applied)
        self._lagged_stop_vote, self._stop_vote = self._stop_vote, stats["stop"]
        self.step += 1
        return applied

    def _backward(self, x, batch, masks, t, weights, noise, self_cond, stats: StepStats) -> torch.Tensor:
        """Gradients of the batch-mean loss, in microbatches; returns the per-video losses."""
        n = x.shape[0]
        self.opt.zero_grad(set_to_none=True)
        per_video = []
        for i in range(0, n, self.microbatch):
            j = min(i + self.microbatch, n)
            last = j == n
            sync = self.ddp.no_sync() if (self.ddp is not None and not last) else contextlib.nullcontext()
            with sync:
                with torch.autocast(**self.autocast):
                    losses = self.diffusion.training_losses(self.forward_model, x[i:j], t[i:j], obs_mask=masks[i:j],
                                                            noise=noise[i:j], model_kwargs=self._kwargs(batch, i, j),
                                                            self_cond=None if self_cond is None else self_cond[i:j])
                # Sum over the microbatch / full batch: any split, even or not, gives the batch mean.
                ((losses["loss"] * weights[i:j]).sum() / n).backward()
            stats.add_losses(losses, t[i:j], self.diffusion.num_timesteps)
            per_video.append(losses["loss"].detach())
        return torch.cat(per_video)

    def _update_timestep_sampler(self, t, losses) -> None:
        if isinstance(self.schedule_sampler, LossSecondMomentResampler):
            # every rank records the whole global batch, in global order, so histories agree
            self.schedule_sampler.update(distributed.all_gather_cat(self.ctx, t),
                                         distributed.all_gather_cat(self.ctx, losses))

    def _optimizer_step(self, applied: torch.Tensor) -> None:
        lr = lr_at(self.step, self.cfg.train.lr, self.cfg.train.lr_warmup_steps, self.cfg.train.lr_anneal_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if self.fused_adamw:
            # fused AdamW skips the whole update (moments, step count, weights) where found_inf is set
            self.opt.found_inf = (~applied).float()
            self.opt.step()
        elif applied.item():  # unfused AdamW cannot skip on the device: one host sync per step
            self.opt.step()

    def stop_agreed(self) -> bool:
        """Whether any rank had been asked to stop by the step before the last one. All ranks read
        the same all-reduced vote after the same step, so they stop together; reading the vote one
        step late never waits for the step just queued on the device."""
        vote = self._lagged_stop_vote
        return vote is not None and bool(vote.item() > 0)

    def check_health(self) -> int:
        """
        Look at the device-side counters of skipped steps (a host sync: called at log
        intervals and before saves only). Raises TrainingDiverged after MAX_BAD_STEPS
        non-finite steps in a row.

        :return: the current number of non-finite steps in a row.
        """
        streak, max_streak = self.window.streaks()
        if max_streak >= MAX_BAD_STEPS:
            raise TrainingDiverged(f"{max_streak} non-finite steps in a row (by step {self.step}); stopping. "
                                   f"The last good checkpoint in {self.run_dir} is intact.")
        return streak

    def _kwargs(self, batch, i, j):
        """Network conditioning besides the frames: class labels for a class-conditional model."""
        if self.cfg.model.num_classes:
            if "y" not in batch:
                raise ValueError("the model is class-conditional but the batch holds no labels 'y'")
            return {"y": batch["y"][i:j].to(self.ctx.device)}
        return {}

    # ------------------------------------------------------------------ the loop
    def _time_left(self) -> str:
        """' | 4m10s left' at the pace of this process so far (previews and saves included)."""
        start = getattr(self, "_run_start", None)
        done = self.step - (start[1] if start else self.step)
        if not done:
            return ""
        left = (self.cfg.train.max_steps - self.step) * (time.perf_counter() - start[0]) / done
        minutes, seconds = divmod(int(round(left)), 60)
        hours, minutes = divmod(minutes, 60)
        return f" | {f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'} left"

    def _reset_log_window(self):
        self.window.reset()
        self._log_time = time.perf_counter()
        self._log_step = self.step

    def preview(self) -> Dict:
        """
        Sample the preview videos with the slowest EMA weights (main rank) and write their
        pictures. Every rank calls this: the others wait at the barrier, so the time it takes
        is left out of the throughput of the log window on every rank.

        :return: the preview's PSNR/SSIM on the main rank, {} elsewhere.
        """
        start = time.perf_counter()
        scores = {}
        if self.previews is not None:
            out = self.previews(self.ema_weights(max(self.ema_rates), self.ctx.device), self.step)
            scores = {k: out[k] for k in ("preview_psnr", "preview_ssim")}
            self.logger.image("preview", out["image"], self.step)
            self.logger.info(f"preview at step {self.step}: prediction PSNR {scores['preview_psnr']:.2f} dB, "
                             f"SSIM {scores['preview_ssim']:.3f} on {out['num_videos']} {out['source']} -> "
                             f"{out['png']} (ground truth above prediction; last row: one generated video)")
        distributed.barrier(self.ctx)
        self._previewed_step = self.step
        self._log_time += time.perf_counter() - start
        return scores

    def log_window(self, extra: Dict = None) -> Dict:
        """Write the statistics of the steps since the last call (log.txt, progress.csv, TensorBoard);
        ``extra`` adds fields to the row (e.g. a preview's scores)."""
        steps = self.step - self._log_step
        elapsed = max(time.perf_counter() - self._log_time, 1e-9)
        lr = self.opt.param_groups[0]["lr"]
        row = {"step": self.step, "samples": self.step * self.global_batch, "lr": lr,
               "steps_per_s": steps / elapsed, "videos_per_s": steps * self.global_batch / elapsed,
               **self.window.read(steps, self.cfg.model.learn_sigma), **(extra or {})}
        self.logger.row(row)
        if row["skipped_steps"]:
            self.logger.info(f"steps {self._log_step}-{self.step - 1}: {row['skipped_steps']} non-finite loss or "
                             f"gradient step(s) skipped")
        self.logger.info(f"step {self.step:>7d} | loss {row['loss']:.4f} | mse {row['mse']:.4f}"
                         + (f" | vb {row['vb']:.4f}" if row["vb"] != "" else "")
                         + f" | grad {row['grad_norm']:.3f} | lr {lr:.2e} | {row['videos_per_s']:.1f} videos/s"
                         + self._time_left())
        self._reset_log_window()
        return row

    def _next_batch(self):
        try:
            return next(self.data)
        except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
            # A DataLoader re-raises a worker's error with the worker's traceback in the message:
            # keep its last line, which names the file and the problem.
            lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
            raise DataFailure(f"the training data failed at step {self.step}: {lines[-1] if lines else e}. "
                              f"The checkpoints in {self.run_dir} are intact.") from None

    def run(self) -> None:
        """Train to --max_steps. Raises ``Preempted`` after saving when a stop signal arrived."""
        with self.stop:
            self._run()

    def _run(self) -> None:
        t = self.cfg.train
        if self.step >= t.max_steps:
            self.logger.info(f"step {self.step} >= --max_steps {t.max_steps}: nothing to do")
            return
        n_params = sum(p.numel() for p in self.params)
        self.logger.info(f"training {n_params / 1e6:.2f}M parameters on {self.ctx.world_size} rank(s) "
                         f"({self.ctx.device}), global batch {self.global_batch}, from step {self.step} "
                         f"to {t.max_steps}")
        bar = self.logger.progress_bar(total=t.max_steps, initial=self.step)
        self._run_start = (time.perf_counter(), self.step)
        self._reset_log_window()
        last_saved, save_due = self.step, False
        while self.step < t.max_steps:
            self.run_step(self._next_batch())
            if bar is not None:
                bar.update(1)
            scores = self.preview() if t.sample_interval and self.step % t.sample_interval == 0 else {}
            if self.step % t.log_interval == 0:
                self.log_window(scores)
                self.check_health()
            elif scores:
                self.logger.row({"step": self.step, "samples": self.step * self.global_batch, **scores})
            save_due |= self.step % t.save_interval == 0
            # During a run of non-finite steps the save waits for the next good step, so
            # pruning never replaces the last checkpoint written before the trouble.
            if save_due and self.check_health() == 0:
                self.save()
                last_saved, save_due = self.step, False
            if self.stop_agreed():
                break
        if self.check_health() == 0 and last_saved != self.step:
            self.save()
        if self.step < t.max_steps:  # left the loop on a stop signal
            if self.step > self._log_step:
                self.log_window()
            raise Preempted(self.stop.signal_name or "a stop signal on another rank", self.step)
        if t.sample_interval and self._previewed_step != self.step:
            scores = self.preview()
            if scores:
                self.logger.row({"step": self.step, "samples": self.step * self.global_batch, **scores})
