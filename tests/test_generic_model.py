"""The model is the method: nothing in it knows the embedded data, and the layers import downwards only."""

import ast
from pathlib import Path

import pytest
import torch

from conftest import REPO, micro_config
from video_diffusion.checkpoints import load_checkpoint, save_checkpoint
from video_diffusion.config import REMOVED_FIELDS, Config
from video_diffusion.sampling.loading import load_for_sampling
from video_diffusion.sampling.options import SampleOptions
from video_diffusion.sampling.plan import context_note, default_context_frames, resolve_plan

PACKAGE = REPO / "video_diffusion"
# The layers, lowest first: a module may import its own layer's and lower layers' modules only.
LAYERS = [{"flags", "seeds", "files", "signals", "visualize", "distributed"}, {"data", "models", "diffusion"},
          {"config", "presets", "checkpoints"}, {"build"}, {"sampling"}, {"training", "evaluation"}, {"studies"}]
THE_MODEL = ("models", "diffusion", "sampling", "training")


def _layer(top: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def _imports(path: Path):
    """(imported module's top-level name under video_diffusion, line) for every import of the package in ``path``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = list(parts[:-1])[:len(parts) - node.level] if node.level > 1 else list(parts[:-1])
                target = base + (node.module.split(".") if node.module else [])
                names = [target] if node.module else [base + [a.name] for a in node.names]
            elif node.module and node.module.startswith("video_diffusion"):
                names = [node.module.split(".")[1:]]
            else:
                continue
            for name in names:
                yield ".".join(name), node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("video_diffusion."):
                    yield ".".join(a.name.split(".")[1:]), node.lineno


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        own = parts[0] if parts[0] != "__init__" else None
        if own is None:
            continue
        for name, line in _imports(path):
            if name and _layer(name.split(".")[0]) > _layer(own):
                upward.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not upward, "\n".join(upward)


def test_nothing_in_the_model_imports_the_embedded_data_or_the_tracker():
    found = []
    for sub in THE_MODEL:
        for path in sorted((PACKAGE / sub).rglob("*.py")):
            for name, line in _imports(path):
                if name.startswith(("data.synthetic", "evaluation.tracker", "evaluation.perfect")):
                    found.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not found, "\n".join(found)
    assert not (PACKAGE / "models" / "tracker.py").exists() and not (PACKAGE / "models" / "warp.py").exists()


def _stored_with(tmp_path, group="model", **fields):
    cfg = micro_config(tmp_path)
    stored = cfg.to_dict()
    stored[group].update(fields)
    path = save_checkpoint(tmp_path / "old", 1, {"config": stored, "model": {}, "ema": {}})
    return load_checkpoint(path)["config"], path


@pytest.mark.parametrize("group,name", sorted(REMOVED_FIELDS))
def test_a_checkpoint_that_set_a_removed_option_is_refused_by_name(tmp_path, group, name):
    default = REMOVED_FIELDS[group, name][0]
    changed = {"output_head": "warp", "warp_radius": 1, "warp_verdict": "pixel", "sigma_data_weight": "x0"}.get(name, True)
    stored, path = _stored_with(tmp_path, group, **{name: changed})
    assert changed != default
    with pytest.raises(ValueError, match=f"sets --{name}, which was removed"):
        Config.from_dict(stored)
    with pytest.raises(ValueError, match=f"sets --{name}, which was removed"):
        load_for_sampling(path)


def test_a_checkpoint_that_left_the_removed_options_at_their_defaults_loads(tmp_path):
    cfg = micro_config(tmp_path)
    model = __import__("video_diffusion.build", fromlist=["create_model"]).create_model(cfg)
    stored = cfg.to_dict()
    for (group, name), (default, _) in REMOVED_FIELDS.items():
        stored[group][name] = default
    path = save_checkpoint(tmp_path / "old", 1, {"config": stored, "model": model.state_dict(), "ema": {}})
    assert Config.from_dict(load_checkpoint(path)["config"]) == cfg
    loaded, net, _ = load_for_sampling(path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), model.state_dict().values()))
    # an option no version of this code knew is not dropped silently
    stored["model"]["warp_speed"] = 9
    with pytest.raises(ValueError, match="unknown model setting.*warp_speed"):
        Config.from_dict(stored)


def test_rollouts_keep_at_most_the_frames_training_kept_unless_asked(tmp_path):
    # a window of 8 frames (half: 4) trained with K = 3 kept frames: the default context is 3
    cfg = micro_config(tmp_path, seq_len=8, max_num_mask_frames=3)
    assert default_context_frames(cfg) == 3
    plan = resolve_plan(cfg, SampleOptions(task="generation", num_frames=12, num_samples=1))
    assert plan.context_frames == 3 and context_note(cfg, plan) is None
    # half the window when K is larger
    assert default_context_frames(micro_config(tmp_path, seq_len=4, max_num_mask_frames=3)) == 2
    # asked for more: it is done, and said
    plan = resolve_plan(cfg, SampleOptions(task="generation", num_frames=12, num_samples=1, context_frames=5))
    assert plan.context_frames == 5
    assert "more frames than training ever kept (K = --max_num_mask_frames 3)" in context_note(cfg, plan)
