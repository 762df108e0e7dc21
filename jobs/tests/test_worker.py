"""Local jobs through a real Celery worker on the real Redis broker."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from conftest import redis_broker_url
from jobs.backends import queue_job
from jobs.models import JobStatus, LogLine, MetricPoint, TrainingJob
from jobs.tests.conftest import make_job
from jobs.tests.throwaway import start_worker, stop_process_group

pytestmark = [pytest.mark.services, pytest.mark.slow]


def wait_for(job, condition, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if condition(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job.pk} is {job.status} ({job.status_message}) at step {job.step}")


def test_a_queued_job_runs_to_completion_on_a_worker(celery_worker_process, owner):
    job = make_job(owner)
    queue_job(job)

    wait_for(job, lambda j: j.is_final)
    assert job.status == JobStatus.COMPLETED, job.status_message
    assert MetricPoint.objects.filter(job=job).count() >= 3
    assert job.model_prefix


def test_killing_the_worker_mid_training_fails_the_job_within_two_minutes(
    celery_worker_process, owner, settings, tmp_path
):
    """kill -9 of the worker: its script dies with it, and beat's reaper fails the job, unattended."""
    job = make_job(owner)
    TrainingJob.objects.filter(pk=job.pk).update(
        hyperparameters={**job.hyperparameters, "max_steps": 100000, "epochs": 1000, "logging_steps": 5}
    )
    queue_job(job)
    wait_for(job, lambda j: j.status == JobStatus.TRAINING and j.step > 0)
    worker = psutil.Process(celery_worker_process.pid)
    family = [worker, *worker.children(recursive=True)]
    scripts = [p for p in family if "finetune.py" in " ".join(p.cmdline())]
    assert scripts, "the training script should be running under the worker"

    os.killpg(celery_worker_process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    psutil.wait_procs(scripts, timeout=10)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in scripts)

    # A new worker with beat comes up, as a supervisor would restart it; nobody calls the reaper
    # by hand. (The heartbeat timeout is at its minimum so the test is quick; with the defaults,
    # 60 s of silence plus a reap every 30 s, it is at most 90 s.)
    log = tmp_path / "worker-with-beat.log"
    restarted = start_worker(
        redis_broker_url(),
        log,
        settings.MEDIA_ROOT,
        concurrency=1,
        beat_schedule=tmp_path / "beat-schedule",
        env={"LOCAL_JOB_HEARTBEAT_TIMEOUT": "10"},
    )
    try:
        wait_for(job, lambda j: j.is_final, timeout=120 - (time.monotonic() - killed_at))
    finally:
        stop_process_group(restarted)
    assert job.status == JobStatus.FAILED
    assert "The worker stopped responding at" in job.status_message
    assert "You can retry it" in job.status_message
    assert time.monotonic() - killed_at < 120
    # The message of the killed run is not replayed: the job ran once.
    assert LogLine.objects.filter(job=job, text__startswith="Running finetune.py").count() == 1


def test_a_lost_worker_is_noticed_within_two_minutes_with_the_default_settings():
    from django.conf import settings

    reap_every = settings.CELERY_BEAT_SCHEDULE["reap-stale-jobs"]["schedule"]
    assert settings.LOCAL_JOB_HEARTBEAT_TIMEOUT + reap_every <= 120
    assert settings.CELERY_TASK_REJECT_ON_WORKER_LOST is False  # reaped, not replayed
