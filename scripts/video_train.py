"""
Train a masked-conditional video diffusion model.

    python scripts/video_train.py --preset tiny                 # laptop CPU, embedded data
    mpiexec -n 8 python scripts/video_train.py --preset bair64 --log_dir runs/bair
    torchrun --nproc_per_node 8 scripts/video_train.py --preset bair64 --log_dir runs/bair

Started on a run directory that holds checkpoints, training resumes from the newest one
with the configuration stored in it (flags given now override it).
"""

import argparse
import sys

from video_diffusion import dist_util
from video_diffusion.config import add_config_flags, describe_config, given_fields
from video_diffusion.logger import RunLogger
from video_diffusion.train_util import TrainingDiverged, build_train_loop, resolve_train_config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_config_flags(parser)
    parser.add_argument("--print_config", action="store_true",
                        help="print the resolved configuration (defaults, preset, checkpoint, flags) and exit")
    args = parser.parse_args(argv)
    try:
        cfg, resume = resolve_train_config(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    if args.print_config:
        print(describe_config(cfg, given_fields(args), str(resume[0]) if resume else None))
        return

    ctx = dist_util.setup_dist()
    logger = RunLogger(cfg.train.log_dir, enabled=ctx.is_main)
    try:
        loop = build_train_loop(cfg, ctx, logger, resume)
        loop.run()
        logger.info(f"done: step {loop.step}, checkpoints in {cfg.train.log_dir}")
    except (ValueError, FileNotFoundError) as e:
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
