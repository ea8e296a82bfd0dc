"""
Train a masked-conditional video diffusion model.

    python scripts/video_train.py --preset tiny                 # laptop CPU, embedded data
    mpiexec -n 8 python scripts/video_train.py --preset bair64 --log_dir runs/bair
    torchrun --nproc_per_node 8 scripts/video_train.py --preset bair64 --log_dir runs/bair

Started on a run directory that holds checkpoints, training resumes from the newest one
with the configuration stored in it (flags given now override it).

SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 stop every rank after the same step with a checkpoint;
the exit status is then 75, so a job script can requeue on it. Other failures exit 1
(2 for bad flags or data found at start-up, or a run directory another training holds)
with a one-line message. Nothing is written before the flags and the data are checked and
the run directory's lock is taken.
"""

import argparse
import sys

from video_diffusion import distributed
from video_diffusion.config import add_config_flags, describe_config, given_fields
from video_diffusion.data import create_dataset
from video_diffusion.training.logger import RunLogger
from video_diffusion.training.preemption import EXIT_PREEMPTED, Preempted
from video_diffusion.training.loop import DataFailure, TrainingDiverged
from video_diffusion.training.runlock import RunLocked, lock_run_dir
from video_diffusion.training.setup import build_train_loop, resolve_train_config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_config_flags(parser)
    parser.add_argument("--print_config", action="store_true",
                        help="print the resolved configuration (defaults, preset, checkpoint, flags) and exit")
    parser.add_argument("--dist_timeout", type=int, default=30, metavar="MINUTES",
                        help="how long ranks wait for each other (set-up and every collective) before failing")
    args = parser.parse_args(argv)
    try:
        cfg, resume = resolve_train_config(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    if args.print_config:
        print(describe_config(cfg, given_fields(args), str(resume.path) if resume else None))
        return

    if args.dist_timeout < 1:
        parser.error(f"--dist_timeout must be at least 1 minute, got {args.dist_timeout}")
    try:
        ctx = distributed.setup_dist(timeout_minutes=args.dist_timeout)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    lock = logger = None
    status = 0
    try:
        # read-only checks first: a refused --data_dir leaves no run directory behind
        dataset = create_dataset(cfg)
        lock = lock_run_dir(cfg.train.log_dir, ctx)
        logger = RunLogger(cfg.train.log_dir, enabled=ctx.is_main, resume_step=resume.step if resume else 0)
        loop = build_train_loop(cfg, ctx, logger, resume, dataset=dataset)
        loop.run()
        logger.info(f"done: step {loop.step}, checkpoints in {cfg.train.log_dir}")
    except (ValueError, FileNotFoundError, RunLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        status = 2
    except Preempted as e:
        logger.info(str(e))
        print(str(e), file=sys.stderr)
        # Every rank raised this after the same step. Wait for all of them to have said so:
        # mpiexec ends the other ranks as soon as one exits with a non-zero status, and a rank
        # without the log (rank 1) reaches its exit first, which could cut rank 0's stop line.
        distributed.barrier(ctx)
        status = EXIT_PREEMPTED
    except (TrainingDiverged, DataFailure, OSError) as e:
        if logger is not None:
            logger.info(f"error: {e}")
        print(f"error: {e}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("interrupted twice: stopped without a checkpoint", file=sys.stderr)
        status = 130
    except BaseException:  # anything else goes on with its traceback, after the group is left
        if logger is not None:
            logger.close()
        if lock is not None:
            lock.release()
        distributed.cleanup(ctx)
        raise
    if logger is not None:
        logger.close()
    if lock is not None:
        lock.release()
    distributed.finish(ctx, status)


if __name__ == "__main__":
    main()
