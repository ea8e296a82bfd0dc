"""
Fault injection: a small training run is killed again and again and must always resume.

    python scripts/fault_injection.py --rounds 20

First an uninterrupted reference run. Then the same run is launched, sent SIGTERM or
SIGKILL at a random moment (start-up, a step, a save), and relaunched, until it reaches
--max_steps. Checked every round: after SIGTERM the run exits 75 with a checkpoint of the
very step it stopped at (nothing lost); after SIGKILL the newest checkpoint is at most
--save_interval steps behind the last logged step; no temporary file is left once a run
has started again. In --overlaps of the launches a second launch of the same command into
the same run directory comes at a random moment of the first (once the first is training):
it must stop at once, exit 2 and name the run directory's holder, and the first goes on. At
the end: the weights, EMA and optimizer state equal the reference run's exactly, and
progress.csv holds every step once. Exit status 0 only if all hold.
"""

import argparse
import csv
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from video_diffusion.checkpoints import list_checkpoints, load_checkpoint  # noqa: E402
from video_diffusion.training.preemption import EXIT_PREEMPTED  # noqa: E402

# A network small enough that a step takes milliseconds.
MICRO = dict(image_size=16, seq_len=4, num_channels=8, num_res_blocks=1, channel_mult="1,2",
             attention_resolutions="8", num_heads=2, max_num_mask_frames=2, diffusion_steps=100, batch_size=2,
             lr=1e-3, ema_rate="0.9,0.99", log_interval=1, dropout=0.1)


def train_cmd(run: Path, args) -> list:
    flags = {**MICRO, "max_steps": args.max_steps, "save_interval": args.save_interval, "num_workers": args.num_workers}
    return [sys.executable, str(REPO / "scripts" / "video_train.py"), "--log_dir", str(run),
            *[x for k, v in flags.items() for x in (f"--{k}", str(v))]]


def logged_steps(run: Path) -> list:
    try:
        with open(run / "progress.csv") as f:
            return [int(r["step"]) for r in csv.DictReader(f) if r.get("loss")]
    except FileNotFoundError:
        return []


def newest_step(run: Path) -> int:
    ckpts = list_checkpoints(run)
    return load_checkpoint(ckpts[-1])["step"] if ckpts else 0


def final_state(run: Path) -> dict:
    state = load_checkpoint(list_checkpoints(run)[-1])
    return {"model": state["model"], "ema": state["ema"], "optimizer": state["optimizer"]["state"],
            "step": state["step"]}


def equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--rounds", type=int, default=20, help="interruptions to inject")
    p.add_argument("--max_steps", type=int, default=600, help="steps of the run")
    p.add_argument("--save_interval", type=int, default=25, help="steps between scheduled checkpoints")
    p.add_argument("--num_workers", type=int, default=1, help="DataLoader workers of the runs")
    p.add_argument("--startup_fraction", type=float, default=0.2, help="share of the kills aimed at start-up")
    p.add_argument("--startup_seconds", type=float, default=4.0, help="start-up kills land this soon after launch")
    p.add_argument("--overlaps", type=int, default=3, help="launches that get a second, overlapping launch")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    p.add_argument("--work_dir", default="", help="where the runs go (default: a temporary folder)")
    p.add_argument("--json", default="", help="also write the figures here")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fault_injection_"))
    work.mkdir(parents=True, exist_ok=True)
    ref, run = work / "reference", work / "faulted"
    for d in (ref, run):
        if d.exists() and any(d.iterdir()):
            p.error(f"{d} is not empty: use another --work_dir")

    start = time.perf_counter()
    done = subprocess.run(train_cmd(ref, args), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the reference run failed: {done.stderr}")
    reference_seconds = time.perf_counter() - start

    failures, rounds, launches, overlaps = [], [], 0, []
    while True:
        launches += 1
        rows_before, saved_before = logged_steps(run), newest_step(run)
        proc = subprocess.Popen(train_cmd(run, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if len(overlaps) < args.overlaps:
            # a second launch at a random step of the first (it holds the lock once it trains)
            at = saved_before + rng.randint(1, args.save_interval)
            while proc.poll() is None and not (logged_steps(run) != rows_before and logged_steps(run)
                                               and logged_steps(run)[-1] >= at):
                time.sleep(0.005)
            if proc.poll() is None:
                time.sleep(rng.uniform(0.0, 0.05))
                second = subprocess.run(train_cmd(run, args), capture_output=True, text=True)
                refused = second.returncode == 2 and "is in use by another training" in second.stderr
                overlaps.append({"launch": launches, "at_step": at, "exit": second.returncode, "refused": refused})
                if not refused:
                    failures.append(f"launch {launches}: an overlapping launch was not refused "
                                    f"(exit {second.returncode}: {second.stderr.strip().splitlines()[-1:]})")
        if len(rounds) < args.rounds:
            sig = rng.choice([signal.SIGTERM, signal.SIGKILL])
            if rng.random() < args.startup_fraction:  # during start-up (imports, resume, data set-up)
                try:
                    proc.wait(timeout=rng.uniform(0.0, args.startup_seconds))
                except subprocess.TimeoutExpired:
                    proc.send_signal(sig)
            else:  # at a random step of the next two save intervals, a random moment into it
                target = saved_before + rng.randint(1, 2 * args.save_interval)
                def reached():  # rows of this launch (a resumed run first drops the stale ones)
                    steps = logged_steps(run)
                    return steps != rows_before and bool(steps) and steps[-1] >= target

                while proc.poll() is None and not reached():
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.05))
                if proc.poll() is None:
                    proc.send_signal(sig)
        _, err = proc.communicate(timeout=600)
        rc = proc.returncode
        if rc == 0:
            if len(rounds) >= args.rounds:
                break
            continue  # finished before the signal: nothing to check this launch
        if rc not in (EXIT_PREEMPTED, -signal.SIGKILL, -signal.SIGTERM):
            failures.append(f"launch {launches}: exit {rc}: {err.strip().splitlines()[-1:]}")
            break
        steps = logged_steps(run)
        # the last step this launch trained: its newest row, or (nothing logged) where it started
        last = steps[-1] if steps != rows_before and steps else saved_before
        saved = newest_step(run)
        name = "SIGTERM" if rc in (EXIT_PREEMPTED, -signal.SIGTERM) else "SIGKILL"
        lost = last - saved
        rounds.append({"signal": name, "exit": rc, "last_logged_step": last, "checkpoint_step": saved, "lost": lost})
        if rc == EXIT_PREEMPTED and lost != 0:
            failures.append(f"launch {launches}: SIGTERM lost {lost} steps (logged {last}, saved {saved})")
        if rc == -signal.SIGTERM:  # killed before the handler was installed (during start-up)
            if lost > args.save_interval:
                failures.append(f"launch {launches}: SIGTERM during start-up lost {lost} steps")
        if name == "SIGKILL" and lost > args.save_interval:
            failures.append(f"launch {launches}: SIGKILL lost {lost} steps > --save_interval {args.save_interval}")

    leftovers = sorted(str(x.name) for x in run.glob(".*.tmp"))
    mine, theirs = final_state(run), final_state(ref)
    same = equal(mine, theirs)
    steps = logged_steps(run)
    once = steps == list(range(1, args.max_steps + 1))
    if not same:
        failures.append(f"final state differs from the uninterrupted run (steps {mine['step']} vs {theirs['step']})")
    if not once:
        failures.append(f"progress.csv does not hold every step once ({len(steps)} rows)")
    if leftovers:
        failures.append(f"temporary files left: {leftovers}")
    sigterm = [r for r in rounds if r["signal"] == "SIGTERM"]
    sigkill = [r for r in rounds if r["signal"] == "SIGKILL"]
    summary = {"rounds": len(rounds), "launches": launches, "sigterm": len(sigterm), "sigkill": len(sigkill),
               "sigterm_exit_75": sum(r["exit"] == EXIT_PREEMPTED for r in sigterm),
               "max_steps_lost_sigterm": max((r["lost"] for r in sigterm), default=0),
               "max_steps_lost_sigkill": max((r["lost"] for r in sigkill), default=0),
               "save_interval": args.save_interval, "max_steps": args.max_steps,
               "overlaps": len(overlaps), "overlaps_refused": sum(o["refused"] for o in overlaps),
               "final_state_equals_uninterrupted": same, "progress_rows_once": once,
               "reference_seconds": round(reference_seconds, 1), "failures": failures, "work_dir": str(work),
               "round_log": rounds}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    for r in rounds:
        print(f"{r['signal']:8s} exit {r['exit']:>4d}  logged step {r['last_logged_step']:>4d}  "
              f"checkpoint {r['checkpoint_step']:>4d}  lost {r['lost']}")
    print(f"{len(rounds)} interruptions ({len(sigterm)} SIGTERM, {len(sigkill)} SIGKILL) over {launches} launches; "
          f"most steps lost: {summary['max_steps_lost_sigterm']} after SIGTERM, {summary['max_steps_lost_sigkill']} "
          f"after SIGKILL (save interval {args.save_interval}); {summary['overlaps_refused']} of {len(overlaps)} "
          f"overlapping launches refused; final state equals the uninterrupted run: {same}; "
          f"every step logged once: {once}")
    for f in failures:
        print(f"FAIL: {f}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
