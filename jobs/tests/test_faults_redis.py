# ruff: noqa: F811 (the fixtures imported from test_sagemaker_support are redefined as arguments)
"""Redis dies and comes back, empty, while jobs run: nothing is stuck and nothing is lost.

A throwaway Redis (persistence off, a free port) is the broker of a real worker with one
training slot. Job A trains; job C waits in the queue behind it; Redis is killed (C's message
dies with it); job D is launched and a dataset uploaded through the pages while it is down
(their messages cannot be sent at all: the pages still answer, the rows wait, queued); Redis
comes back empty. The worker reconnects, A finishes, and the reapers send C, D and the
dataset's preparation again, which then run once each.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from datasets_app.actions import resend_lost_preparations
from datasets_app.models import Dataset
from jobs import actions
from jobs.backends import queue_job, resend_lost_jobs
from jobs.models import JobStatus, LogLine, PlaygroundRun, PlaygroundStatus, TrainingJob
from jobs.playground import runs as playground
from jobs.tests.conftest import TINY_HYPERPARAMETERS, make_job, make_ready_dataset, scratch_base_model
from jobs.tests.test_sagemaker_support import sagemaker_job, sagemaker_settings  # noqa: F401
from jobs.tests.throwaway import (
    ThrowawayRedis,
    celery_app_on,
    free_port,
    start_worker,
    stop_process_group,
    wait_for,
)
from llmtuner import broker

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def redis(tmp_path):
    server = ThrowawayRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def state(job: TrainingJob) -> str:
    job.refresh_from_db()
    return f"{job.name}: {job.status} {job.status_message!r} step {job.step}"


def wait_until_final(jobs, timeout, log):
    def all_final() -> bool:
        return all(TrainingJob.objects.get(pk=job.pk).is_final for job in jobs)

    try:
        wait_for(all_final, timeout, "the jobs to end", log)
    except AssertionError as error:
        raise AssertionError("\n".join(state(job) for job in jobs) + f"\n{error}") from None


def test_a_redis_restart_loses_no_job(redis, owner, settings, tmp_path):
    settings.QUEUED_JOB_RESEND_SECONDS = 10
    dataset = make_ready_dataset(owner)
    log = tmp_path / "worker.log"
    worker = start_worker(redis.url, log, settings.MEDIA_ROOT, concurrency=1)
    try:
        with celery_app_on(redis.url):
            a = make_job(owner, dataset, name="A: training through the outage")
            TrainingJob.objects.filter(pk=a.pk).update(
                hyperparameters={**TINY_HYPERPARAMETERS, "max_steps": 150, "logging_steps": 5}
            )
            queue_job(a)
            wait_for(lambda: TrainingJob.objects.get(pk=a.pk).step > 0, 90, "A to train", log)

            c = actions.launch_job(
                owner,
                name="C: waiting in the queue",
                dataset=dataset,
                base_model=scratch_base_model(),
                hyperparameters=dict(TINY_HYPERPARAMETERS),
            )
            c.refresh_from_db()
            assert c.celery_task_id in broker.messages_in_broker()
            # While its message waits in the broker, the reaper leaves it alone.
            assert resend_lost_jobs(now=timezone.now() + timedelta(minutes=5)) == []

            redis.kill()
            assert state(a).startswith("A: training through the outage: training")

            # Launched while Redis is down: the page answers as usual and the job waits, queued.
            client = Client()
            client.force_login(owner)
            started = time.monotonic()
            response = client.post(
                "/jobs/new/",
                {
                    "name": "D: launched during the outage",
                    "dataset": dataset.pk,
                    "base_model": scratch_base_model().pk,
                    "backend": "local",
                    "preset": "custom",
                    "method": "full",
                    "epochs": "1",
                    "max_steps": "30",
                    "batch_size": "4",
                    "max_seq_length": "64",
                    "learning_rate": "0.003",
                    "packing": "on",
                    "merge_adapter": "on",
                },
            )
            assert response.status_code == 302, response.content.decode()[:500]
            assert time.monotonic() - started < 15
            d = TrainingJob.objects.get(name="D: launched during the outage")
            assert d.status == JobStatus.QUEUED
            # So is a dataset uploaded while it is down.
            upload = SimpleUploadedFile("outage.csv", b"text\n" + b"a line of text\n" * 50)
            form = {"file": upload, "format": "auto", "txt_mode": "line", "validation_percent": "5"}
            response = client.post("/datasets/upload/", form)
            assert response.status_code == 302, response.content.decode()[:500]
            uploaded = Dataset.objects.get(original_filename="outage.csv")
            assert uploaded.status == Dataset.Status.UPLOADED
            assert broker.messages_in_broker() is None  # nothing can be told while it is down
            assert resend_lost_jobs(now=timezone.now() + timedelta(minutes=5)) == []

            redis.start()  # empty: C's message is gone, D's was never sent
            # The worker reconnects by itself and A, which never needed Redis to train, finishes.
            wait_until_final([a], 180, log)
            assert TrainingJob.objects.get(pk=a.pk).status == JobStatus.COMPLETED, state(a)
            wait_for(lambda: log.read_text().count("Connected to redis://") >= 2, 60, "a reconnect", log)

            time.sleep(1)
            assert {j.status for j in TrainingJob.objects.filter(pk__in=[c.pk, d.pk])} == {JobStatus.QUEUED}
            later = timezone.now() + timedelta(seconds=11)
            assert sorted(resend_lost_jobs(now=later)) == sorted([c.pk, d.pk])
            assert resend_lost_preparations(now=later) == [uploaded.pk]
            # Sent once: now their messages are in the broker, and a second pass leaves them be.
            assert resend_lost_jobs(now=later) == resend_lost_preparations(now=later) == []

            wait_until_final([c, d], 240, log)
            wait_for(lambda: Dataset.objects.get(pk=uploaded.pk).is_final, 60, "the dataset", log)
    finally:
        stop_process_group(worker)

    for job in (a, c, d):
        job.refresh_from_db()
        assert job.status == JobStatus.COMPLETED, state(job)
        # Each ran once.
        runs = LogLine.objects.filter(job=job, text__startswith="Running finetune.py").count()
        assert runs == 1, (job.name, runs)
    for job in (c, d):
        assert LogLine.objects.filter(job=job, text__contains="it was sent again").count() == 1
    uploaded.refresh_from_db()
    assert uploaded.status == Dataset.Status.READY and uploaded.samples == 50, uploaded.error


def test_the_reapers_of_lost_jobs_and_preparations_run_every_minute():
    from django.conf import settings

    entry = settings.CELERY_BEAT_SCHEDULE["resend-lost-jobs"]
    assert entry == {"task": "jobs.tasks.resend_lost_jobs", "schedule": 60.0}
    entry = settings.CELERY_BEAT_SCHEDULE["resend-lost-preparations"]
    assert entry == {"task": "datasets_app.tasks.resend_lost_preparations", "schedule": 60.0}
    assert settings.QUEUED_JOB_RESEND_SECONDS <= 300


def test_a_prompt_sent_while_the_broker_is_down_waits_then_fails_visibly(owner):
    job = make_job(owner, status=JobStatus.COMPLETED, model_prefix=f"users/{owner.pk}/jobs/1/model")
    client = Client()
    client.force_login(owner)
    nobody = f"redis://127.0.0.1:{free_port()}/0"

    with celery_app_on(nobody):
        data = {"prompt": "Hello", "max_new_tokens": "8", "temperature": "0", "top_p": "1"}
        response = client.post(f"/jobs/{job.pk}/playground/", data)

    assert response.status_code == 302
    run = PlaygroundRun.objects.get()
    assert run.status == PlaygroundStatus.QUEUED
    PlaygroundRun.objects.filter(pk=run.pk).update(
        created_at=timezone.now() - playground.QUEUED_TIMEOUT - timedelta(minutes=1)
    )
    assert playground.fail_stale_runs() == [run.pk]
    run.refresh_from_db()
    assert run.status == PlaygroundStatus.FAILED and "No worker picked this prompt up" in run.error


def stop_from_the_job_page_while_the_broker_is_down(job: TrainingJob):
    client = Client()
    client.force_login(job.owner)
    with celery_app_on(f"redis://127.0.0.1:{free_port()}/0"):
        return client.post(f"/jobs/{job.pk}/stop/")


def test_stopping_a_sagemaker_job_while_the_broker_is_down_answers_and_the_job_is_stopping(
    owner, sagemaker_settings
):
    job = sagemaker_job(owner, status=JobStatus.TRAINING)

    response = stop_from_the_job_page_while_the_broker_is_down(job)

    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPING  # the poller sends the stop again (it is not lost)


def test_stopping_a_queued_job_while_the_broker_is_down_answers_and_the_job_is_stopped(owner):
    job = make_job(owner)

    response = stop_from_the_job_page_while_the_broker_is_down(job)

    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPED
    assert job.notified_at is None  # the email could not be queued; the job ended all the same
