import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from video_diffusion.build import create_diffusion, create_model
from video_diffusion.config import Config, apply_overrides
from video_diffusion.data import MovingDigits
from video_diffusion.data.synthetic import Digit
from video_diffusion.distributed import DistContext
from video_diffusion.models.unet import UNet3D
from video_diffusion.training.logger import RunLogger
from video_diffusion.training.loop import TrainLoop
from video_diffusion.training.setup import build_train_loop

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# A model small enough that a training step takes milliseconds on a CPU.
MICRO = dict(image_size=16, seq_len=4, num_channels=8, num_res_blocks=1, channel_mult="1,2",
             attention_resolutions="8", num_heads=2, max_num_mask_frames=2, uncondition_rate=0.25,
             diffusion_steps=100, batch_size=2, lr=1e-3, ema_rate="0.9,0.99", max_steps=4, log_interval=2,
             save_interval=2, num_workers=0)


# The same micro model as command-line flags (for the scripts).
MICRO_FLAGS = ["--image_size", "16", "--seq_len", "4", "--num_channels", "8", "--num_res_blocks", "1",
               "--channel_mult", "1,2", "--attention_resolutions", "8", "--num_heads", "2",
               "--max_num_mask_frames", "2", "--diffusion_steps", "100", "--batch_size", "2",
               "--num_workers", "0", "--log_interval", "1"]


def micro_config(tmp_path=None, **overrides) -> Config:
    fields = {**MICRO, **overrides}
    if tmp_path is not None and "log_dir" not in fields:
        fields["log_dir"] = str(tmp_path / "run")
    return apply_overrides(Config(), fields)


@pytest.fixture(autouse=True)
def _torch_threads():
    # Tests compare numbers; one intra-op thread keeps reductions in a fixed order and
    # avoids oversubscribing CI's 2 cores when subprocesses run beside pytest.
    torch.set_num_threads(1)
    yield


def script_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (trains, or runs scripts in subprocesses); "
                            "deselect with -m 'not slow'")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skips with its reason without one; run with -m cuda)")


# ---------------------------------------------------------------------- shared helpers
CPU = DistContext(0, 1, 0, 1, torch.device("cpu"), "single")


def loop_for(cfg, resume=None, data=None):
    logger = RunLogger(cfg.train.log_dir, echo=False)
    if data is None:
        return build_train_loop(cfg, CPU, logger, resume)
    torch.manual_seed(0)
    return TrainLoop(cfg, CPU, create_model(cfg), create_diffusion(cfg), data, logger, resume=resume)


def flat_params(module_or_list):
    params = module_or_list.parameters() if hasattr(module_or_list, "parameters") else module_or_list
    return torch.cat([p.detach().flatten() for p in params])


def fixed_batches(cfg, n_videos):
    data = MovingDigits(cfg.model.image_size, cfg.model.seq_len, seed=3)
    return torch.stack([data[i]["video"] for i in range(n_videos)])


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(n)]


# A batch of given frames the sampling tests share.
SHAPE = (3, 3, 4, 16, 16)
X_KNOWN = torch.rand(SHAPE) * 2 - 1


def make(image_size=16, seq_len=None, **kw):
    args = dict(image_size=image_size, in_channels=3, model_channels=8, out_channels=3, num_res_blocks=1,
                attention_resolutions=(8, 4), channel_mult=(1, 2, 2), num_heads=2)
    args.update(kw)
    model = UNet3D(**args)
    # Output and residual convolutions start at zero (identity blocks); randomise every
    # parameter so that the tests see a network that actually depends on its inputs.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def run(model, n, c, t, h, w, mask=None):
    x = torch.randn(n, c, t, h, w)
    mask = torch.zeros(n, t) if mask is None else mask
    return model(x, torch.randint(0, 1000, (n,)), obs_mask=mask)


def digits_behind_each_other(frames: int = 8) -> np.ndarray:
    """uint8 [T, 32, 32, 3]: a grey 3 passing behind a white 8 (they overlap in frame 1, which
    hides part of the 3) while a green 1 moves freely far from both (rows 19-29, from column 3
    one pixel per frame)."""
    ds = MovingDigits(32, frames)
    digits = [Digit(ds.glyphs[k], np.array(colour), np.array(pos), np.array(vel)) for k, colour, pos, vel in
              [(8, (1.0, 1.0, 1.0), (6, 4), (0, 2)), (3, (0.5, 0.5, 0.5), (7, 14), (0, -2)),
               (1, (0.2, 0.9, 0.3), (19, 3), (0, 1))]]
    return ds.render(digits, [ds.corners(d, frames) for d in digits])
