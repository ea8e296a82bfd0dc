"""Checkpoint files under attack and under a cluster's faults: safe loading, failed saves, lineage, resume."""

import csv
import errno
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO, micro_config, script_env
from conftest import flat_params, loop_for
from video_diffusion import checkpoints as ckpt_mod
from video_diffusion.checkpoints import (CheckpointWriteError, find_resume_point, list_checkpoints, load_checkpoint,
                                        save_checkpoint)
from video_diffusion.training.setup import find_resume


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path, marker):
    torch.save({"format": ckpt_mod.FORMAT, "version": ckpt_mod.VERSION, "step": 9, "config": Evil(marker)}, path)


def test_a_checkpoint_that_would_run_code_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil_checkpoint(tmp_path / "evil.pt", marker)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "video_sample.py"), "--model_path",
                           str(tmp_path / "evil.pt"), "--out_dir", str(tmp_path / "out")],
                          env=script_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and not marker.exists()
    assert "evil.pt" in proc.stderr and "posix.system" in proc.stderr and "Traceback" not in proc.stderr
    # auto-resume reads every checkpoint of the run directory the same way
    run = tmp_path / "run"
    run.mkdir()
    evil_checkpoint(run / "ckpt_0000009.pt", marker)
    with pytest.raises(ValueError, match="no checkpoint in .* can be loaded.*refused"):
        find_resume_point(run)
    assert not marker.exists()


def test_a_real_checkpoint_still_loads(tmp_path):
    cfg = micro_config(tmp_path, max_steps=2, save_interval=2)
    loop_for(cfg).run()
    state = load_checkpoint(list_checkpoints(cfg.train.log_dir)[-1])
    assert state["step"] == 2 and state["rng"][0]["numpy"][1].dtype.name == "uint32"  # a numpy array, allowed
    assert state["data"]["source"] == "moving-digits" and state["lineage"]["forked_from"] == ""


def test_a_full_disk_leaves_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    run = tmp_path / "run"
    save_checkpoint(run, 1, {"w": torch.ones(3)})
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="ckpt_0000002.pt: out of space on the filesystem of .* MB free; "
                                                   "the checkpoint needs about 0.0 MB.*previous checkpoints"):
        save_checkpoint(run, 2, {"w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in run.iterdir()] == ["ckpt_0000001.pt"]
    assert torch.equal(load_checkpoint(run / "ckpt_0000001.pt")["w"], torch.ones(3))


@pytest.mark.parametrize("code, cause", [(errno.EACCES, "no permission to write in"),
                                         (errno.EROFS, "is on a read-only filesystem")])
def test_a_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch, code, cause):
    run = tmp_path / "run"
    save_checkpoint(run, 1, {"w": torch.ones(3)})

    def refused(path, *a, **k):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(ckpt_mod, "write_atomically", refused)
    with pytest.raises(CheckpointWriteError, match=f"ckpt_0000002.pt: .*{cause}"):
        save_checkpoint(run, 2, {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(run / "ckpt_0000001.pt")["w"], torch.ones(3))


def test_torchs_own_full_disk_error_is_named_by_the_free_space(tmp_path, monkeypatch):
    # torch.save reports a full disk as a RuntimeError without errno ("unexpected pos ..."): the
    # free space against the checkpoint's size names it
    run = tmp_path / "run"
    save_checkpoint(run, 1, {"w": torch.ones(3)})

    def torch_full(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 11797440 vs 11797328")

    monkeypatch.setattr(torch, "save", torch_full)
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda p: SimpleNamespace(free=2 ** 20))  # 1 MB free
    with pytest.raises(CheckpointWriteError, match=r"out of space .*\(1.0 MB free; the checkpoint needs about 4.0 MB\)"):
        save_checkpoint(run, 2, {"w": torch.zeros(2 ** 20)})
    monkeypatch.undo()
    assert [p.name for p in run.iterdir()] == ["ckpt_0000001.pt"]
    assert torch.equal(load_checkpoint(run / "ckpt_0000001.pt")["w"], torch.ones(3))


def test_training_on_a_full_disk_is_a_one_line_error(tmp_path, monkeypatch):
    cfg = micro_config(tmp_path, max_steps=4, save_interval=2)
    loop_for(cfg).run()  # ckpt 2 and 4
    (tmp_path / "run" / ".ckpt_0000003.pt.tmp").write_bytes(b"left by a killed save")
    cfg = micro_config(tmp_path, max_steps=6, save_interval=2)
    loop = loop_for(cfg, find_resume(cfg))
    assert not (tmp_path / "run" / ".ckpt_0000003.pt.tmp").exists()  # stale temporaries cleared at start

    def full_disk(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="could not write checkpoint .*ckpt_0000006.pt"):
        loop.run()
    monkeypatch.undo()
    names = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.endswith((".pt", ".tmp")))
    assert names == ["ckpt_0000002.pt", "ckpt_0000004.pt"]
    assert load_checkpoint(tmp_path / "run" / "ckpt_0000004.pt")["step"] == 4


def test_rollback_never_loses_the_new_branch_to_pruning_or_a_relaunch(tmp_path):
    run = tmp_path / "run"
    loop_for(micro_config(tmp_path, max_steps=4, save_interval=2)).run()  # ckpt 2 and 4
    # roll back to step 2 with --keep_checkpoints 1 and train one step
    cfg = micro_config(tmp_path, max_steps=3, save_interval=1, keep_checkpoints=1,
                       resume_checkpoint=str(run / "ckpt_0000002.pt"))
    loop = loop_for(cfg, find_resume(cfg))
    loop.run()
    assert [p.name for p in list_checkpoints(run)] == ["ckpt_0000003.pt"]  # the new branch's file survives
    moved = list((run / "abandoned").glob("*/ckpt_0000004.pt"))
    assert len(moved) == 1  # the old branch is kept aside, not deleted
    assert "not on the resumed branch" in (run / "log.txt").read_text()
    # a plain relaunch continues the new branch, never the abandoned step 4
    plain = micro_config(tmp_path, max_steps=5, save_interval=1)
    resume = find_resume(plain)
    assert resume.step == 3
    # a requeued job that repeats --resume_checkpoint continues the branch forked from it
    again = micro_config(tmp_path, max_steps=5, save_interval=1, resume_checkpoint=str(run / "ckpt_0000002.pt"))
    resume = find_resume(again)
    assert resume.step == 3 and resume.continued_branch


def test_rollback_with_the_default_keep_resumes_the_right_branch_after_preemption(tmp_path):
    run = tmp_path / "run"
    loop_for(micro_config(tmp_path, max_steps=6, save_interval=2)).run()  # ckpt 2, 4, 6 (diverged, say)
    cfg = micro_config(tmp_path, max_steps=3, save_interval=1, resume_checkpoint=str(run / "ckpt_0000002.pt"))
    rolled = loop_for(cfg, find_resume(cfg))
    rolled.run()  # "preempted" at step 3, before passing the old top step 6
    resume = find_resume(micro_config(tmp_path))
    assert resume.step == 3 and torch.equal(flat_params(rolled.model), torch.cat(
        [v.flatten() for k, v in resume.state["model"].items() if k in dict(rolled.model.named_parameters())]))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    run = tmp_path / "run"
    loop_for(micro_config(tmp_path, max_steps=4, save_interval=2)).run()
    data = (run / "ckpt_0000004.pt").read_bytes()
    (run / "ckpt_0000004.pt").write_bytes(data[: len(data) // 2])
    cfg = micro_config(tmp_path, max_steps=5)
    resume = find_resume(cfg)
    assert resume.step == 2 and [p.name for p, _ in resume.unreadable] == ["ckpt_0000004.pt"]
    loop = loop_for(cfg, resume)
    log = (run / "log.txt").read_text()
    assert "ckpt_0000004.pt' is not a readable checkpoint" in log
    assert "resuming from the newest complete checkpoint instead" in log
    assert not (run / "ckpt_0000004.pt").exists() and list((run / "abandoned").glob("*/ckpt_0000004.pt"))
    loop.run()
    assert find_resume(cfg).step == 5


def test_resume_reports_every_changed_setting_and_changed_data(tmp_path):
    loop_for(micro_config(tmp_path, max_steps=2, save_interval=2)).run()
    cfg = micro_config(tmp_path, max_steps=3, lr=3e-3, batch_size=3, seed=5)
    loop_for(cfg, find_resume(cfg))
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "4 changed setting(s)" in log  # and --max_steps 2 -> 3
    for change in ("--lr: 0.001 -> 0.003", "--batch_size: 2 -> 3", "--seed: 0 -> 5"):
        assert change in log
    assert "the training data differs from the checkpoint's (seed: 0 -> 5)" in log


def test_progress_rows_after_the_resumed_step_are_dropped(tmp_path):
    run = tmp_path / "run"
    cfg = micro_config(tmp_path, max_steps=6, save_interval=2, log_interval=1)
    loop_for(cfg).run()
    (run / "ckpt_0000006.pt").unlink()  # as if killed after logging steps 5 and 6 but before their save
    from video_diffusion.training.logger import RunLogger

    cfg = micro_config(tmp_path, max_steps=6, save_interval=2, log_interval=1)
    resume = find_resume(cfg)
    assert resume.step == 4
    logger = RunLogger(run, echo=False, resume_step=resume.step)
    from conftest import CPU
    from video_diffusion.training.setup import build_train_loop

    build_train_loop(cfg, CPU, logger, resume).run()
    logger.close()
    with open(run / "progress.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [1, 2, 3, 4, 5, 6]  # 5 and 6 once each
    aside = list((run / "abandoned").glob("progress_after_0000004_*.csv"))
    assert len(aside) == 1 and len(aside[0].read_text().splitlines()) == 3  # header + the dropped rows 5, 6


def write_npz_videos(root, n=4, t=6, size=16):
    import numpy as np

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        np.savez(root / f"v{i}.npz", video=rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8))


def test_a_video_that_becomes_unreadable_mid_run_is_a_one_line_error(tmp_path):
    data = tmp_path / "videos"
    write_npz_videos(data)
    cfg = micro_config(tmp_path, data_dir=str(data), num_workers=1, max_steps=100, save_interval=2)
    loop = loop_for(cfg)
    for _ in range(2):
        loop.run_step(next(loop.data))
    loop.save()
    for p in data.iterdir():
        p.write_bytes(b"truncated")  # the disk under the run goes bad
    from video_diffusion.training.loop import DataFailure

    with pytest.raises(DataFailure) as e:
        loop.run()
    message = str(e.value)
    assert "\n" not in message and "training data failed at step" in message and ".npz" in message
    # the checkpoints before the failure are intact (the loader had prefetched two more batches)
    assert 2 <= load_checkpoint(list_checkpoints(cfg.train.log_dir)[-1])["step"] <= loop.step


class DiesInWorker(torch.utils.data.Dataset):
    """Moving digits whose worker process dies when it reaches video 5."""

    def __init__(self, cfg):
        from video_diffusion.data import create_dataset

        self.inner = create_dataset(cfg)

    def __len__(self):
        return 8

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        if index == 5 and torch.utils.data.get_worker_info() is not None:
            os._exit(1)
        return self.inner[key]


def test_a_dead_dataloader_worker_is_a_one_line_error(tmp_path):
    from conftest import CPU
    from video_diffusion.training.logger import RunLogger
    from video_diffusion.training.loop import DataFailure
    from video_diffusion.training.setup import build_train_loop

    cfg = micro_config(tmp_path, num_workers=1, max_steps=50)
    loop = build_train_loop(cfg, CPU, RunLogger(cfg.train.log_dir, echo=False), dataset=DiesInWorker(cfg))
    with pytest.raises(DataFailure) as e:
        loop.run()
    assert "\n" not in str(e.value) and "worker" in str(e.value)


def test_a_run_of_the_old_continuous_motion_generator_is_told_its_data_changed(tmp_path):
    loop_for(micro_config(tmp_path, max_steps=2, save_interval=2)).run()
    path = tmp_path / "run" / "ckpt_0000002.pt"
    state = torch.load(path, weights_only=False)
    del state["data"]["motion"]  # what the generator before whole-pixel motion stored
    torch.save(state, path)
    cfg = micro_config(tmp_path, max_steps=3)
    loop_for(cfg, find_resume(cfg))
    assert "the training data differs from the checkpoint's (motion: None -> 'pixel')" in (
        tmp_path / "run" / "log.txt").read_text()
