# ruff: noqa: F811 (the fixtures imported from test_sagemaker_support are redefined as arguments)
"""manage.py poll_jobs: one SageMaker poll cycle now, the beat task's own, and what it changed."""

from __future__ import annotations

import io

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError

from jobs.backends.sagemaker import poll
from jobs.models import JobStatus
from jobs.tests.test_sagemaker_support import (  # noqa: F401 (fixtures)
    account,
    fake_aws,
    progress_line,
    sagemaker_job,
    sagemaker_settings,
)

pytestmark = pytest.mark.django_db


def run() -> str:
    out = io.StringIO()
    call_command("poll_jobs", stdout=out)
    return out.getvalue()


def test_a_poll_moves_running_jobs_and_says_what_changed(owner, account, monkeypatch):
    monkeypatch.setattr(poll.time, "sleep", lambda seconds: None)
    job = sagemaker_job(owner, name="Cloud run")
    idle = sagemaker_job(owner, name="Still waiting")
    account.add_job(
        job.sagemaker_job_name,
        secondary="Training",
        lines=[
            progress_line("start", total_steps=100),
            progress_line("progress", step=40, total_steps=100, loss=2.5),
        ],
    )
    account.add_job(idle.sagemaker_job_name, secondary="Starting")

    out = run()

    job.refresh_from_db()
    assert job.status == JobStatus.TRAINING and job.step == 40
    assert (
        f"job {job.pk} “Cloud run”: preparing → training; AWS InProgress / Starting → InProgress / Training"
        in out
    )
    assert "step 0 → 40 of 100" in out
    assert "Still waiting" not in out
    assert "2 running job(s) looked at; 2 described" in out and "1 changed" in out
    assert "DescribeTrainingJob 2" in out


def test_nothing_running_means_no_aws_call(db, account):
    out = run()

    assert "0 running job(s) looked at" in out and "AWS calls: none." in out
    assert sum(account.calls.values()) == 0


def test_another_poll_running_is_said_and_nothing_is_polled(owner, account):
    sagemaker_job(owner)
    cache.set(poll.LOCK_KEY, "someone else", 60)

    out = run()

    assert out == "Nothing polled: another poll is running.\n"
    assert sum(account.calls.values()) == 0


def test_without_sagemaker_settings_it_says_what_to_set(db, settings):
    settings.SAGEMAKER_ROLE_ARN = ""

    with pytest.raises(CommandError, match="SageMaker is not configured: set SAGEMAKER_ROLE_ARN"):
        run()
