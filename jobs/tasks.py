"""Thin Celery tasks: ids in, domain functions do the work."""

from __future__ import annotations

from celery import shared_task

from jobs import lifecycle, notifications
from jobs.backends import local


@shared_task(acks_late=True)
def run_local_job(job_id: int) -> None:
    local.run_job(job_id)


@shared_task(ignore_result=True)
def reap_stale_jobs() -> None:
    lifecycle.reap_stale_jobs()


@shared_task(ignore_result=True)
def notify_job_finished(job_id: int) -> None:
    notifications.send_job_finished_email(job_id)
