"""Platform overhead of a local job on the scratch model.

Overhead = (queued → first training step) + (last training step → completed),
with a real Celery worker on the broker named by CELERY_BROKER_URL (the
embedded default's filesystem broker when unset). Uses a throwaway SQLite
database and media folder; nothing is left behind.

    .venv/bin/python bench/bench_overhead.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    os.environ.update(LLMTUNER_VAR_DIR=str(workdir), DJANGO_SETTINGS_MODULE="llmtuner.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from jobs.actions import launch_job
    from jobs.models import BaseModel, MetricPoint, TrainingJob
    from jobs.tests.conftest import TINY_HYPERPARAMETERS, make_ready_dataset

    owner = get_user_model().objects.create_user("bench", "bench@example.com", "x")
    dataset = make_ready_dataset(owner)
    base_model = BaseModel.objects.get(hub_id="scratch:tiny-gpt2")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "llmtuner", "worker", "-Q", "default,training", "-c", "1",
         "--without-gossip", "--without-mingle", "-l", "WARNING"],
        cwd=BASE_DIR, env=os.environ.copy(), start_new_session=True,
    )  # fmt: skip
    time.sleep(8)  # let the worker start before the clock runs
    results = []
    try:
        for run in range(args.runs):
            hyperparameters = {**TINY_HYPERPARAMETERS, "max_steps": 20, "logging_steps": 1, "eval_steps": 0}
            queued = time.time()
            job = launch_job(owner, name=f"bench {run}", dataset=dataset, base_model=base_model,
                             hyperparameters=hyperparameters)  # fmt: skip
            first_step = last_step = None
            while True:
                job.refresh_from_db()
                now = time.time()
                if first_step is None and job.step >= 1:
                    first_step = now
                if job.total_steps and job.step >= job.total_steps and last_step is None:
                    last_step = now
                if job.is_final:
                    break
                time.sleep(0.05)
            done = time.time()
            assert job.status == "completed", job.status_message
            points = MetricPoint.objects.filter(job=job).count()
            result = {
                "queued_to_first_step_s": round(first_step - queued, 2),
                "last_step_to_completed_s": round(done - last_step, 2),
                "training_s": round(last_step - first_step, 2),
                "metric_points": points,
            }
            result["overhead_s"] = round(
                result["queued_to_first_step_s"] + result["last_step_to_completed_s"], 2
            )
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        TrainingJob.objects.all().delete()
    best = min(r["overhead_s"] for r in results)
    median = sorted(r["overhead_s"] for r in results)[len(results) // 2]
    broker = os.environ.get("CELERY_BROKER_URL", "filesystem://")
    print(f"overhead: best {best} s, median {median} s (target ≤ 10 s); broker {broker}")


if __name__ == "__main__":
    main()
