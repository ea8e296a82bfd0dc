"""
The model to sample: rebuilt from a checkpoint's stored configuration, with its raw or EMA
weights, so that sampling never asks for the training flags again.
"""

from typing import Dict, Optional

from ..build import create_model
from ..config import Config, apply_overrides, validate
from ..models.nn import to_channels_last
from ..checkpoints import load_checkpoint


def load_for_sampling(model_path, overrides: Optional[Dict] = None, use_ema: Optional[bool] = None,
                      ema_rate: Optional[str] = None, device="cpu"):
    """
    Rebuild a model from a checkpoint's stored configuration.

    :param overrides: flat configuration fields given on the command line (they win).
    :param use_ema: load EMA weights; None = EMA when the checkpoint has them.
    :param ema_rate: which EMA rate; None = the slowest (largest) one stored.
    :return: (cfg, model in eval mode, description of the weights loaded).
    """
    state = load_checkpoint(model_path)
    cfg = apply_overrides(Config.from_dict(state["config"]), overrides or {})
    validate(cfg)
    rates = sorted(state.get("ema", {}), key=float)
    use_ema = bool(rates) if use_ema is None else use_ema
    if use_ema:
        if not rates:
            raise ValueError(f"--use_ema: checkpoint {model_path} holds no EMA weights")
        rate = ema_rate if ema_rate is not None else rates[-1]
        if rate not in state["ema"]:
            raise ValueError(f"--ema_rate {rate}: checkpoint {model_path} holds EMA rates {rates}")
        weights, desc = state["ema"][rate], f"EMA {rate}"
    else:
        weights, desc = state["model"], "raw weights"
    model = create_model(cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"the model flags do not match the weights in {model_path} "
                         f"(drop the overriding model flags): {str(e).splitlines()[0]} ...") from e
    model = model.to(device).eval()
    if cfg.train.channels_last:
        model = to_channels_last(model)
    return cfg, model, f"{desc} at step {state['step']}"
