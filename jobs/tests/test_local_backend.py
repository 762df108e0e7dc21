"""The local backend runs the real finetune.py on the scratch model."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connections
from django.utils import timezone

from jobs import lifecycle
from jobs.backends import local
from jobs.models import JobStatus, LogLine, MetricPoint, TrainingJob
from jobs.tests.conftest import make_job
from llmtuner import storage

pytestmark = [pytest.mark.slow]


def test_hyperparameters_are_passed_as_sagemaker_does():
    assert local.script_arguments({"learning_rate": 5e-05, "packing": True, "base_model": "gpt2"}) == [
        "--learning_rate", "5e-05", "--packing", "true", "--base_model", '"gpt2"',
    ]  # fmt: skip


@pytest.mark.django_db
def test_a_local_job_trains_and_stores_the_model(owner):
    job = make_job(owner)
    local.run_job(job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED, job.status_message
    assert job.step == job.total_steps > 0
    losses = list(MetricPoint.objects.filter(job=job, loss__isnull=False).values_list("loss", flat=True))
    assert len(losses) >= 3
    assert losses[-1] < losses[0]
    stored = storage.list_keys(job.model_prefix + "/")
    names = {key.rsplit("/", 1)[-1] for key in stored}
    assert {"config.json", "model.safetensors", "metrics.json", "hyperparameters.json"} <= names
    assert any(name.startswith("tokenizer") for name in names)
    assert job.log_key and storage.exists(job.log_key)
    assert LogLine.objects.filter(job=job).exists()
    assert job.metrics


@pytest.mark.django_db
def test_a_job_whose_claim_was_taken_does_nothing(owner):
    job = make_job(owner)
    lifecycle.transition(job.pk, JobStatus.STOPPED)
    local.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPED
    assert not MetricPoint.objects.filter(job=job).exists()


@pytest.mark.django_db
def test_bad_hyperparameters_fail_the_job_with_the_reason(owner):
    job = make_job(owner)
    TrainingJob.objects.filter(pk=job.pk).update(hyperparameters={**job.hyperparameters, "learning_rate": 50})
    local.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "learning_rate" in job.status_message


@pytest.mark.django_db(transaction=True)
def test_stop_mid_training_ends_stopped(owner):
    job = make_job(owner)
    TrainingJob.objects.filter(pk=job.pk).update(
        hyperparameters={**job.hyperparameters, "max_steps": 100000, "epochs": 1000, "logging_steps": 5}
    )

    def run_then_close_the_threads_connection():
        # A thread's connection is Django's to close, not the test database teardown's to trip on.
        try:
            local.run_job(job.pk)
        finally:
            connections.close_all()

    runner = threading.Thread(target=run_then_close_the_threads_connection)
    runner.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status == JobStatus.TRAINING and job.step > 0:
            break
        time.sleep(0.5)
    assert job.status == JobStatus.TRAINING
    assert lifecycle.request_stop(job)
    runner.join(60)
    assert not runner.is_alive()
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPED
    assert job.finished_at is not None


# Trains "forever" (30 s) without touching torch: what these tests watch is the process.
ENDLESS_SCRIPT = """
import json, time
print(json.dumps({"event": "start", "total_steps": 300}), flush=True)
for step in range(1, 301):
    print(json.dumps({"event": "progress", "step": step, "total_steps": 300, "loss": 1.0}), flush=True)
    time.sleep(0.1)
"""


def run_endlessly_doing(job: TrainingJob, meanwhile, monkeypatch, folder: Path) -> float:
    """Run the job on this worker with ENDLESS_SCRIPT; once it trains, `meanwhile()` happens once,
    as if from elsewhere, between two of the worker's heartbeats. Returns how long the run took."""
    script = folder / "endless.py"
    script.write_text(ENDLESS_SCRIPT)
    monkeypatch.setattr(local, "SCRIPT", script)
    beat, done = lifecycle.heartbeat, []

    def heartbeat(job_id: int) -> None:
        if not done and TrainingJob.objects.filter(pk=job_id, step__gt=0).exists():
            done.append(meanwhile())
        beat(job_id)

    monkeypatch.setattr(lifecycle, "heartbeat", heartbeat)
    started = time.monotonic()
    local.run_job(job.pk)
    assert done, "the job never trained"
    return time.monotonic() - started


@pytest.mark.django_db
def test_a_script_whose_job_was_reaped_meanwhile_is_killed(owner, settings, monkeypatch, tmp_path):
    job = make_job(owner)

    def the_reaper_ends_it() -> None:
        # The worker went silent for longer than the timeout (its database hung, say), the reaper
        # ended the job, and now the worker comes back to its running script.
        later = timezone.now() + timedelta(seconds=settings.LOCAL_JOB_HEARTBEAT_TIMEOUT + 5)
        assert lifecycle.reap_stale_jobs(now=later) == [job.pk]

    seconds = run_endlessly_doing(job, the_reaper_ends_it, monkeypatch, tmp_path)

    assert seconds < 20  # the script was stopped, not left to train on unwatched for 30 s
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.status_message.startswith("The worker stopped responding")
    log = list(LogLine.objects.filter(job=job).values_list("text", flat=True))
    assert "The job was marked failed meanwhile: stopping the training script" in log


@pytest.mark.django_db
def test_a_local_run_works_in_a_task_folder_that_a_restarted_worker_cleans_up(
    owner, settings, tmp_path, monkeypatch
):
    # A worker killed mid-run cannot remove its run's files (the copied dataset, the model so far);
    # in a task folder, the next worker start does (llmtuner/scratch.py).
    settings.TASK_TEMP_DIR = tmp_path / "tasks"
    job = make_job(owner)
    seen = []
    monkeypatch.setattr(local.LocalRun, "run", lambda run: seen.append((run.workdir, run.workdir.is_dir())))

    local.run_job(job.pk)

    [(workdir, existed)] = seen
    assert existed and workdir.parent == settings.TASK_TEMP_DIR
    assert not workdir.exists()
