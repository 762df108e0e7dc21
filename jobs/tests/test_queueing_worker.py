"""The queue with the real thing: a real training worker on the real Redis, the real script.

- two users share one training worker round-robin, through the token tasks, and the worker
  beats while it is busy;
- a job stopped mid-training keeps its model so far (download, playground);
- a local job that reaches MAX_JOB_RUNTIME_SECONDS stops with its model so far.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from django.db import connection, connections

from conftest import _purge_queues, _stop, _wait_for, make_user, redis_broker_url
from jobs import artifacts, lifecycle
from jobs.backends import local, queue_job
from jobs.models import JobStatus, LogLine, TrainingJob, WorkerHeartbeat
from jobs.playground import runs as playground
from jobs.tests.conftest import make_job, make_ready_dataset
from llmtuner import storage

pytestmark = [pytest.mark.services, pytest.mark.slow]
BASE_DIR = Path(__file__).resolve().parents[2]
LONG = {"max_steps": 100000, "epochs": 1000, "logging_steps": 5}


@pytest.fixture
def training_worker(transactional_db, tmp_path, settings):
    """One `celery worker -Q training --concurrency 1`, as make_run and docker-compose start it.

    Started by the test (`start()`), so the jobs can be queued first, on the test database.
    """
    broker = redis_broker_url()
    if broker is None:
        pytest.skip("needs CELERY_BROKER_URL on Redis")
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "llmtuner.settings",
        "CELERY_BROKER_URL": broker,
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
    }
    from llmtuner.celery import app

    app.conf.task_always_eager = False
    _purge_queues(broker)
    log_path = tmp_path / "trainer.log"
    processes = []

    def start() -> subprocess.Popen:
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "llmtuner", "worker", "-Q", "training",
                 "--concurrency", "1", "-n", "training@test", "--without-gossip", "--without-mingle",
                 "-l", "INFO"],
                cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        processes.append(process)
        _wait_for(lambda: b"ready." in log_path.read_bytes(), 60, "the training worker to start", log_path)
        return process

    try:
        yield start
    finally:
        for process in processes:
            _stop(process)
        _purge_queues(broker)


def wait_for(condition, timeout=180, every=0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(every)
    raise AssertionError("timed out")


def test_two_users_share_one_training_worker_round_robin_and_it_beats_while_busy(training_worker, owner):
    bob = make_user("bob@example.com")
    alices, bobs = make_ready_dataset(owner), make_ready_dataset(bob)
    tiny = {"max_steps": 4, "logging_steps": 2}
    jobs = [make_job(owner, alices, name=f"alice {n}") for n in (1, 2, 3)]
    jobs.append(make_job(bob, bobs, name="bob 1"))
    for job in jobs:
        TrainingJob.objects.filter(pk=job.pk).update(hyperparameters={**job.hyperparameters, **tiny})
        queue_job(job)  # four tokens wait, in this order, before the worker starts

    training_worker()
    beats_while_busy = set()

    def all_ended():
        states = dict(TrainingJob.objects.values_list("name", "status"))
        beat = WorkerHeartbeat.objects.filter(queues__contains=",training,").first()
        if beat is not None and any(s in (JobStatus.PREPARING, JobStatus.TRAINING) for s in states.values()):
            beats_while_busy.add(beat.beat_at)
        return all(s in (JobStatus.COMPLETED, JobStatus.FAILED) for s in states.values())

    wait_for(all_ended, timeout=300)

    ended = list(TrainingJob.objects.order_by("started_at"))
    assert [job.status for job in ended] == [JobStatus.COMPLETED] * 4, [j.status_message for j in ended]
    assert [job.name for job in ended] == ["alice 1", "bob 1", "alice 2", "alice 3"]
    # The main process beats every 10 s, also while its pool process trains.
    assert len(beats_while_busy) >= 2, beats_while_busy


def test_a_job_stopped_mid_training_keeps_its_model_so_far(training_worker, owner_client, owner):
    job = make_job(owner)
    TrainingJob.objects.filter(pk=job.pk).update(hyperparameters={**job.hyperparameters, **LONG})
    queue_job(job)
    training_worker()
    wait_for(lambda: TrainingJob.objects.filter(pk=job.pk, status=JobStatus.TRAINING, step__gt=0).exists())

    assert lifecycle.request_stop(job)
    wait_for(lambda: TrainingJob.objects.get(pk=job.pk).is_final, timeout=60)

    job.refresh_from_db()
    assert job.status == JobStatus.STOPPED
    assert job.status_message.startswith("Stopped at step ") and job.status_message.endswith(
        "; the model so far is saved."
    )
    assert artifacts.has_model(job) and playground.unavailable_reason(job) is None
    page = owner_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Download the model so far (.zip)" in page
    download = owner_client.get(f"/jobs/{job.pk}/download/")
    names = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content))).namelist()
    assert any(name.endswith("model.safetensors") for name in names), names


@pytest.mark.django_db(transaction=True)
def test_a_local_job_that_reaches_the_runtime_cap_stops_with_its_model_so_far(owner, settings):
    job = make_job(owner)
    TrainingJob.objects.filter(pk=job.pk).update(hyperparameters={**job.hyperparameters, **LONG})

    def run_then_close_the_threads_connection():
        try:
            local.run_job(job.pk)
        finally:
            connections.close_all()

    runner = threading.Thread(target=run_then_close_the_threads_connection)
    runner.start()
    # The cap is read on each of the worker's ticks: once the job has trained, it has run past 5 s.
    wait_for(lambda: TrainingJob.objects.filter(pk=job.pk, status=JobStatus.TRAINING, step__gt=0).exists())
    settings.MAX_JOB_RUNTIME_SECONDS = 5
    runner.join(60)

    assert not runner.is_alive()
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPED
    assert job.status_message.startswith("Stopped at the 5 s a job may run on this machine, at step ")
    assert job.status_message.endswith("; the model so far is saved.")
    names = {key.rsplit("/", 1)[-1] for key in storage.list_keys(job.model_prefix + "/")}
    assert {"config.json", "model.safetensors"} <= names
    log = " ".join(LogLine.objects.filter(job=job).values_list("text", flat=True))
    assert "Reached the 5 s a job may run on this machine: stopping, and keeping the model so far" in log
