"""Thin Celery tasks: ids in, domain functions do the work."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from datasets_app import actions


@shared_task(
    acks_late=True,
    ignore_result=True,
    # The soft limit fails the dataset with a message; the hard one ends a worker stuck past it
    # (the reaper then fails the dataset).
    soft_time_limit=settings.DATASET_PREPARE_TIME_LIMIT_SECONDS,
    time_limit=settings.DATASET_PREPARE_TIME_LIMIT_SECONDS + 60,
)
def prepare_dataset(dataset_id: int) -> None:
    # Claims the row itself (a conditional update), so a repeated message does nothing.
    actions.run_preparation(dataset_id)


@shared_task(ignore_result=True)
def resend_lost_preparations() -> None:
    actions.resend_lost_preparations()


@shared_task(ignore_result=True)
def reap_stale_preparations() -> None:
    actions.reap_stale_preparations()
