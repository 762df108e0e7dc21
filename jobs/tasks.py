"""Thin Celery tasks: ids in, domain functions do the work."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from jobs import backends, hub_check, hub_push, lifecycle, notifications
from jobs.backends import local, sagemaker
from jobs.playground import runs as playground


@shared_task(bind=True, acks_late=True)
def run_local_job(self, job_id: int) -> None:
    # A token: the worker runs the fairest queued local job, not necessarily `job_id` (jobs/queueing.py).
    local.run_job(job_id, token_id=self.request.id)


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=90)
def check_hub_model(hub_id: str) -> None:
    # On the default queue: a quick question to the Hub, never behind a training run.
    hub_check.check_and_store(hub_id)


@shared_task(ignore_result=True)
def reap_stale_jobs() -> None:
    lifecycle.reap_stale_jobs()


@shared_task(ignore_result=True)
def resend_lost_jobs() -> None:
    backends.resend_lost_jobs()


@shared_task(ignore_result=True)
def notify_job_finished(job_id: int) -> None:
    notifications.send_job_finished_email(job_id)


@shared_task(
    ignore_result=True,
    soft_time_limit=settings.PLAYGROUND_TIME_LIMIT_SECONDS,
    time_limit=settings.PLAYGROUND_TIME_LIMIT_SECONDS + 60,
)
def run_playground(run_id: int) -> None:
    playground.run_generation(run_id)


@shared_task(ignore_result=True)
def fail_stale_playground_runs() -> None:
    playground.fail_stale_runs()


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=6)
def submit_sagemaker_job(self, job_id: int) -> None:
    try:
        sagemaker.submit_job(job_id)
    except sagemaker.TransientAWSError as error:
        if self.request.retries >= self.max_retries:
            sagemaker.give_up_submission(job_id, error)
            return
        raise self.retry(exc=error, countdown=sagemaker.retry_delay(self.request.retries)) from error


@shared_task(ignore_result=True, soft_time_limit=240, time_limit=270)
def poll_sagemaker_jobs() -> None:
    sagemaker.poll_jobs()


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=6)
def stop_sagemaker_job(self, job_id: int) -> None:
    try:
        sagemaker.stop_job(job_id)
    except sagemaker.TransientAWSError as error:
        if self.request.retries >= self.max_retries:
            sagemaker.give_up_stop(job_id, error)
            return
        raise self.retry(exc=error, countdown=sagemaker.retry_delay(self.request.retries)) from error


@shared_task(
    ignore_result=True,
    soft_time_limit=settings.HUB_PUSH_TIME_LIMIT_SECONDS,
    time_limit=settings.HUB_PUSH_TIME_LIMIT_SECONDS + 60,
)
def push_to_hub(push_id: int) -> None:
    hub_push.run_push(push_id)


@shared_task(ignore_result=True)
def fail_stale_hub_pushes() -> None:
    hub_push.fail_stale_pushes()
