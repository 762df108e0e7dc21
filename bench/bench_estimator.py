"""How far the time estimate is from real local runs of finetune.py, before and after calibration.

    python bench/bench_estimator.py                  # the default set of scratch-model runs
    python bench/bench_estimator.py --threads 2

Each run trains a scratch GPT-2 (no download) with finetune.py as a subprocess, the
way the local backend does, on synthetic text, and takes the wall time of the whole
process (start-up, tokenizer, training, evaluation, saving). The estimate is
jobs.estimate.estimate_job for the same inputs, with the token count the app would
show for the dataset (the bundled GPT-2 tokenizer's, as dataset preparation counts)
and the model's parameter count as the catalogue would hold it (the script's own
count). Error = estimate ÷ actual − 1.

"Calibrated" applies what jobs.pricing.calibration_factor does in the app, leave one
out: each run's estimate is multiplied by the median actual ÷ estimate of the other
runs (the app uses the last 20 completed jobs of the same family, at least 3).
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
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmtuner.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from datasets_app.preparation import load_tokenizer  # noqa: E402
from jobs.estimate import estimate_job  # noqa: E402
from training_scripts.hyperparameters import validate_hyperparameters  # noqa: E402

SCRIPT = ROOT / "training_scripts" / "finetune.py"
WORDS = " ".join(
    [
        "model data train token learn batch layer weight value loss step rate cloud job queue worker",
        "river stone forest market window garden silver yellow quick brown lazy happy north south",
        "east west morning evening winter summer city village road bridge music paper letter number",
    ]
).split(" ")

RUNS = [
    {"base_model": "scratch:tiny-gpt2", "max_steps": 30, "batch_size": 4, "max_seq_length": 64},
    {"base_model": "scratch:tiny-gpt2", "max_steps": 120, "batch_size": 8, "max_seq_length": 128},
    {"base_model": "scratch:tiny-gpt2", "epochs": 1, "batch_size": 8, "max_seq_length": 128},
    {"base_model": "scratch:tiny-gpt2", "max_steps": 60, "batch_size": 16, "max_seq_length": 256},
    {
        "base_model": "scratch:tiny-gpt2",
        "method": "lora",
        "max_steps": 80,
        "batch_size": 8,
        "max_seq_length": 128,
    },
    {"base_model": "scratch:small-gpt2", "max_steps": 20, "batch_size": 4, "max_seq_length": 128},
    {"base_model": "scratch:small-gpt2", "max_steps": 40, "batch_size": 8, "max_seq_length": 128},
]


@dataclass
class Model:
    hub_id: str
    parameters: int
    architecture: str = "causal"
    context_length: int = 256


def make_data(folder: Path, rows: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))) + "." for _ in range(rows)]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.jsonl", "w") as out:
        for text in texts:
            out.write(json.dumps({"text": text}) + "\n")
    return texts


def run_finetune(data: Path, work: Path, hyperparameters: dict, threads: int | None) -> tuple[float, dict]:
    cmd = [sys.executable, str(SCRIPT), "--train_dir", str(data)]
    cmd += ["--model_dir", str(work / "model"), "--output_dir", str(work / "output")]
    for name, value in hyperparameters.items():
        cmd += [f"--{name}", value if isinstance(value, str) else json.dumps(value)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"event"')]
    if proc.returncode != 0:
        sys.exit(f"finetune.py failed ({proc.returncode}): {events[-1:]}\n{proc.stderr[-2000:]}")
    start = next(event for event in events if event["event"] == "start")
    return elapsed, start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the runs (default: torch's choice)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-estimator-") as tmp:
        data = Path(tmp) / "data"
        texts = make_data(data, args.rows)
        tokenizer = load_tokenizer()
        tokens = sum(
            len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)
        )
        print(
            f"data: {len(texts)} samples, {tokens:,} GPT-2 tokens; "
            f"LOCAL_TRAINING_TFLOPS={settings.LOCAL_TRAINING_TFLOPS}; {os.cpu_count()} CPUs"
        )
        print(f"{'run':<58} {'steps':>5} {'estimate':>8} {'actual':>7} {'error':>7}")
        results = []
        for i, values in enumerate(RUNS):
            clean, errors = validate_hyperparameters({"epochs": 1, **values})
            assert not errors, errors
            actual, start = run_finetune(data, Path(tmp) / f"run{i}", clean, args.threads)
            model = Model(values["base_model"], int(start.get("total_parameters") or 0))
            estimate = estimate_job(
                tokens=tokens, samples=len(texts), base_model=model, hyperparameters=clean, backend="local"
            )
            label = ", ".join(f"{k}={v}" for k, v in values.items()).replace("scratch:", "")
            error = estimate.seconds / actual - 1
            results.append((estimate.seconds, actual))
            print(f"{label:<58} {estimate.steps:>5} {estimate.seconds:>7}s {actual:>6.1f}s {error:>+7.0%}")

        raw_errors = [abs(estimated / actual - 1) for estimated, actual in results]
        calibrated_errors = []
        for i, (estimated, actual) in enumerate(results):
            others = [a / e for j, (e, a) in enumerate(results) if j != i]
            factor = statistics.median(others)
            calibrated_errors.append(abs(estimated * factor / actual - 1))
        print(
            f"mean absolute error: raw {statistics.mean(raw_errors):.0%} "
            f"(worst {max(raw_errors):.0%}), "
            f"calibrated leave-one-out {statistics.mean(calibrated_errors):.0%} "
            f"(worst {max(calibrated_errors):.0%})"
        )


if __name__ == "__main__":
    main()
