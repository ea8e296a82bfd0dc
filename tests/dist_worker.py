"""Test helper: train a configuration under whatever launcher started it, then dump each rank's weights."""

import json
import sys

import torch

from video_diffusion import distributed
from video_diffusion.config import Config
from video_diffusion.training.logger import RunLogger
from video_diffusion.training.setup import build_train_loop


def main(config_json, out_dir):
    torch.set_num_threads(1)
    cfg = Config.from_dict(json.loads(open(config_json).read()))
    ctx = distributed.setup_dist(device="cpu")
    logger = RunLogger(cfg.train.log_dir, enabled=ctx.is_main, echo=False)
    loop = build_train_loop(cfg, ctx, logger)
    init = [p.detach().clone() for p in loop.model.parameters()]
    loop.run()
    logger.close()
    torch.save({"init": init, "params": [p.detach().clone() for p in loop.model.parameters()], "world_size": ctx.world_size,
                "launcher": ctx.launcher}, f"{out_dir}/rank{ctx.rank}.pt")
    distributed.finish(ctx)


if __name__ == "__main__":
    main(*sys.argv[1:])
