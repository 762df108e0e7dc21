"""Resume after a kill: seconds from process start to the first resumed step, and steps lost.

    python bench/bench_resume.py                                  # scratch:tiny-gpt2, 3 kills
    python bench/bench_resume.py --model scratch:small-gpt2 --save-steps 20 --repeats 3

Each repeat, all as subprocesses run the way the backends run finetune.py:

1. a fresh run, timed from process start to its first `progress` event (step 1): the
   baseline start-up (imports, data, tokenizer, model);
2. a run with checkpoints every `--save-steps`, killed with SIGKILL at a random moment
   `--kill-after` seconds (uniform in the range) after its first step; the steps it had
   reported and its newest checkpoint are noted;
3. the same command again, timed from process start to its first `progress` event (the
   first resumed step), which goes on from the newest complete checkpoint.

Steps lost = the last step the killed run reported - the step the restart resumed from; the
bound is the steps since the last checkpoint (< save_steps). Also printed: how long a
checkpoint took to write (from the step's `progress` event to its `checkpoint` event).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "training_scripts" / "finetune.py"
sys.path.insert(0, str(ROOT))

from bench.bench_finetune import make_rows  # noqa: E402


def command(folder: Path, args) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        *("--train_dir", str(folder / "data"), "--model_dir", str(folder / "model")),
        *("--output_dir", str(folder / "out"), "--checkpoint_dir", str(folder / "ckpt")),
        *(
            "--base_model",
            args.model,
            "--max_steps",
            str(args.max_steps),
            "--save_steps",
            str(args.save_steps),
        ),
        *("--max_seq_length", str(args.seq_len), "--batch_size", "8", "--logging_steps", "1"),
        *("--validation_split", "0", "--num_sample_generations", "0"),
    ]


def environment(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    return env


def watch(cmd: list[str], env: dict, stop_when) -> tuple[subprocess.Popen, list[tuple[float, dict]], float]:
    """Start ``cmd``; read its events (with the seconds since start) until ``stop_when`` says so."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    events: list[tuple[float, dict]] = []
    for line in proc.stdout:
        events.append((time.monotonic() - started, json.loads(line)))
        if stop_when(events):
            break
    return proc, events, started


def first_step_seconds(events) -> float:
    return next(t for t, e in events if e["event"] == "progress")


def end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def one_repeat(args, rng: random.Random) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        root = Path(tmp)
        for name in ("fresh", "killed"):
            (root / name / "data").mkdir(parents=True)
            rows = make_rows(args.samples)
            (root / name / "data/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        env = environment(args.threads)

        proc, events, _ = watch(
            command(root / "fresh", args), env, lambda ev: ev[-1][1]["event"] == "progress"
        )
        end(proc)
        fresh = first_step_seconds(events)

        kill_after = rng.uniform(*args.kill_after)
        cmd = command(root / "killed", args)
        proc, events, started = watch(cmd, env, lambda ev: ev[-1][1]["event"] == "progress")
        timer = threading.Timer(kill_after, proc.kill)  # SIGKILL, at a moment unrelated to the steps
        timer.start()
        events += [(time.monotonic() - started, json.loads(line)) for line in proc.stdout]
        timer.join()
        proc.wait()
        if any(e["event"] == "done" for _, e in events):
            raise SystemExit("the run ended before the kill: raise --max-steps")
        reported = max(e["step"] for _, e in events if e["event"] == "progress")
        progress_at = {e["step"]: t for t, e in events if e["event"] == "progress"}
        writes = [t - progress_at[e["step"]] for t, e in events if e["event"] == "checkpoint"]
        last_checkpoint = max((e["step"] for _, e in events if e["event"] == "checkpoint"), default=0)

        proc, again, _ = watch(cmd, env, lambda ev: ev[-1][1]["event"] == "progress")
        end(proc)
        start = next(e for _, e in again if e["event"] == "start")
        return {
            "fresh_first_step_s": fresh,
            "resumed_first_step_s": first_step_seconds(again),
            "killed_after_s": kill_after,
            "reported": reported,
            "last_checkpoint_event": last_checkpoint,
            "resumed_from": start["resumed_from_step"],
            "lost": reported - start["resumed_from_step"],
            "checkpoint_write_s": statistics.median(writes) if writes else None,
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="scratch:tiny-gpt2")
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kill-after", type=float, nargs=2, default=(2.0, 6.0), metavar=("MIN_S", "MAX_S"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(
        f"{args.model}, save_steps {args.save_steps}, seq {args.seq_len}, batch 8, {args.threads} thread(s)"
    )
    print("repeat  fresh→step1 s  restart→resumed step s  killed at step  resumed from  lost  ckpt write s")
    results = []
    for i in range(args.repeats):
        r = one_repeat(args, rng)
        results.append(r)
        write = "-" if r["checkpoint_write_s"] is None else f"{r['checkpoint_write_s']:.3f}"
        print(
            f"{i + 1:>6}  {r['fresh_first_step_s']:>13.2f}  {r['resumed_first_step_s']:>23.2f}  "
            f"{r['reported']:>14}  {r['resumed_from']:>12}  {r['lost']:>4}  {write:>12}"
        )
        assert 0 <= r["lost"] < args.save_steps, r
    fresh = statistics.median(r["fresh_first_step_s"] for r in results)
    resumed = statistics.median(r["resumed_first_step_s"] for r in results)
    print(
        f"median: fresh start to step 1 {fresh:.2f} s; restart to the first resumed step {resumed:.2f} s "
        f"({resumed - fresh:+.2f} s for the resume); steps lost {[r['lost'] for r in results]} "
        f"(bound: < save_steps = {args.save_steps})"
    )


if __name__ == "__main__":
    main()
