import os
import sys
from pathlib import Path

import pytest
import torch

from video_diffusion.config import Config, apply_overrides

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# A model small enough that a training step takes milliseconds on a CPU.
MICRO = dict(image_size=16, seq_len=4, num_channels=8, num_res_blocks=1, channel_mult="1,2",
             attention_resolutions="8", num_heads=2, max_num_mask_frames=2, uncondition_rate=0.25,
             diffusion_steps=100, batch_size=2, lr=1e-3, ema_rate="0.9,0.99", max_steps=4, log_interval=2,
             save_interval=2, num_workers=0)


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
    config.addinivalue_line("markers", "slow: trains a model for minutes (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skips with its reason without one; run with -m cuda)")
