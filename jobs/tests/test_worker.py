"""Local jobs through a real Celery worker on the real Redis broker."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from jobs import lifecycle
from jobs.backends import queue_job
from jobs.models import JobStatus, MetricPoint, TrainingJob
from jobs.tests.conftest import make_job

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


def test_killing_the_worker_mid_training_gets_the_job_reaped(celery_worker_process, owner, settings):
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
    psutil.wait_procs(scripts, timeout=10)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in scripts)

    settings.LOCAL_JOB_HEARTBEAT_TIMEOUT = 10
    time.sleep(11)
    assert lifecycle.reap_stale_jobs() == [job.pk]
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "The worker stopped responding at" in job.status_message
