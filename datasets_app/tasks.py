"""Thin Celery tasks: ids in, domain functions do the work."""

from __future__ import annotations

from celery import shared_task

from datasets_app import actions


@shared_task(acks_late=True, ignore_result=True)
def prepare_dataset(dataset_id: int) -> None:
    # Claims the row itself (a conditional update), so a repeated message does nothing.
    actions.run_preparation(dataset_id)


@shared_task(ignore_result=True)
def resend_lost_preparations() -> None:
    actions.resend_lost_preparations()
