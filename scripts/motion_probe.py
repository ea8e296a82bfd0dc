"""
How fast a network can learn to read a motion, asked directly (``studies/motion.py``): the
network of a configuration trained only on x_0 from pure noise with the first two frames of
each video given, scored every --eval_every steps by the learning curve's motion use (the x_0
error with the last given frame alone minus with both; the perfect model's is 0.076 on the
embedded digits) on the same held-out videos. A network that learns no motion here will not
learn it inside a diffusion training either; one that does says the diffusion training is
what to change. The trained network is thrown away.

    python scripts/motion_probe.py --preset tiny --steps 1000 --eval_every 250
    python scripts/motion_probe.py --preset tiny --given_frames 2 --given_correlation 2 --json probe.json
"""

import argparse

from video_diffusion.config import add_config_flags, apply_overrides, config_from_args, validate
from video_diffusion.files import write_json
from video_diffusion.studies.motion import focused_motion_training


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    add_config_flags(p)
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps (videos = steps x --batch_size)")
    p.add_argument("--eval_every", type=int, default=250, help="steps between scores")
    p.add_argument("--num_videos", type=int, default=32, help="held-out videos per score")
    p.add_argument("--json", help="write the scores here")
    args = p.parse_args(argv)
    try:
        cfg = config_from_args(args)
        cfg = apply_overrides(cfg, {"num_workers": 0})
        validate(cfg)
        if args.steps < 1 or args.eval_every < 1 or args.num_videos < 1:
            raise ValueError("--steps, --eval_every and --num_videos must be >= 1")
        if not cfg.diffusion.predict_xstart:
            raise ValueError("--predict_xstart must be true: the probe trains the network's x_0 directly")
    except ValueError as e:
        p.error(str(e))
    print(f"motion probe: {args.steps} steps of {cfg.train.batch_size} videos, x_0 from the last timestep with "
          f"frames 0 and 1 given, scored on {args.num_videos} held-out videos", flush=True)
    rows = focused_motion_training(cfg, args.steps, args.eval_every, args.num_videos,
                                   log=lambda line: print(line, flush=True))
    if args.json:
        write_json(args.json, {"config": cfg.to_dict(), "scores": rows})
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
