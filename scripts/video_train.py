"""
Train a masked-conditional video diffusion model.

    python scripts/video_train.py --preset tiny                 # laptop CPU, embedded data
    mpiexec -n 8 python scripts/video_train.py --preset bair64 --data_dir data/bair/train
    torchrun --nproc_per_node 8 scripts/video_train.py --preset bair64 ...

Started on a run directory that holds checkpoints, training resumes from the newest one
with the configuration stored in it (flags given now override it).
"""

import argparse
import sys

from video_diffusion import dist_util
from video_diffusion.build import create_diffusion, create_model
from video_diffusion.config import Config, add_config_flags, apply_overrides, config_from_args, validate
from video_diffusion.data import create_dataset, resolve_num_workers, train_loader
from video_diffusion.logger import RunLogger
from video_diffusion.train_util import TrainingDiverged, TrainLoop, find_resume


def resolve_config(args):
    """Flags -> config; on a run directory with checkpoints the stored configuration is the base."""
    cfg = config_from_args(args)
    if not cfg.train.log_dir:
        cfg = apply_overrides(cfg, {"log_dir": f"runs/{cfg.preset or 'default'}"})
    resume = find_resume(cfg)
    if resume is not None:
        stored = Config.from_dict(resume[1]["config"])
        stored = apply_overrides(stored, {"log_dir": cfg.train.log_dir, "resume_checkpoint": cfg.train.resume_checkpoint})
        cfg = config_from_args(args, base=stored)
        cfg.preset = cfg.preset or stored.preset
    return cfg, resume


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(parser)
    args = parser.parse_args(argv)
    try:
        cfg, resume = resolve_config(args)
        validate(cfg)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))

    ctx = dist_util.setup_dist()
    logger = RunLogger(cfg.train.log_dir, enabled=ctx.is_main)
    try:
        model, diffusion = create_model(cfg), create_diffusion(cfg)
        dataset = create_dataset(cfg)
        workers = resolve_num_workers(cfg.train.num_workers, ctx.local_world_size)

        def data(start_step):
            return train_loader(dataset, cfg.train.batch_size, ctx.rank, ctx.world_size, cfg.train.seed,
                                start_step, workers, pin_memory=ctx.device.type == "cuda")

        loop = TrainLoop(cfg, ctx, model, diffusion, data, logger, resume=resume)
        loop.run()
        logger.info(f"done: step {loop.step}, checkpoints in {cfg.train.log_dir}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as e:
        logger.info(str(e))
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        logger.close()
        dist_util.cleanup(ctx)


if __name__ == "__main__":
    main()
