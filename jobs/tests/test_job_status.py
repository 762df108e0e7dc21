# ruff: noqa: F811 (the fixtures imported from test_sagemaker_support are redefined as arguments)
"""manage.py job_status: jobs with their state, progress and cost, as a table or JSON."""

from __future__ import annotations

import io
import json
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from jobs.models import JobStatus
from jobs.tests.conftest import make_job
from jobs.tests.test_sagemaker_support import sagemaker_job, sagemaker_settings  # noqa: F401

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("job_status", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def jobs(owner, outsider, sagemaker_settings):
    local = make_job(owner, name="Local run", status=JobStatus.TRAINING, step=30, total_steps=120)
    cloud = sagemaker_job(outsider, name="Cloud run", cost_usd=Decimal("1.2345"))
    failed = make_job(owner, name="Broken run", status=JobStatus.FAILED, status_message="Out of memory")
    return local, cloud, failed


def test_the_table_lists_every_job_newest_first_with_state_progress_and_cost(jobs):
    local, cloud, failed = jobs

    out = run()

    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "OWNER", "WHERE", "STATUS", "PROGRESS", "COST", "CREATED"]
    names = [line for line in lines[2:] if line.strip()][:3]
    assert ["Broken run" in names[0], "Cloud run" in names[1], "Local run" in names[2]] == [True] * 3
    assert "training" in names[2] and "25 % 30/120" in names[2] and "free" in names[2]
    assert "ml.g5.xlarge" in names[1] and "$1.23" in names[1] and "mallory@example.com" in names[1]
    assert lines[-1] == "3 jobs"


def test_filters_by_user_and_state(jobs):
    assert "Cloud run" not in run("--user", "ALICE@example.com")
    assert "Local run" in run("--user", "alice@example.com")
    active = run("--status", "active")
    assert "Local run" in active and "Cloud run" in active and "Broken run" not in active
    failed = run("--status", "failed")
    assert "Broken run" in failed and "Local run" not in failed


def test_json_lists_the_same_jobs(jobs):
    local, cloud, failed = jobs

    result = json.loads(run("--json", "--status", "active"))

    assert [job["id"] for job in result] == [cloud.pk, local.pk]
    assert result[0]["cost_usd"] == "1.2345" and result[0]["instance_type"] == "ml.g5.xlarge"
    assert result[1] | {"created_at": None} == {
        "id": local.pk,
        "name": "Local run",
        "owner": "alice@example.com",
        "backend": "local",
        "instance_type": None,
        "status": "training",
        "status_message": "",
        "percent": 25,
        "step": 30,
        "total_steps": 120,
        "cost_usd": None,
        "estimated_cost_usd": None,
        "max_cost_usd": None,
        "created_at": None,
        "finished_at": None,
        "queue_position": None,  # running, not queued
        "estimated_seconds": None,
        "started_at": None,
        "evaluation": None,  # a job whose run reported no evaluation (yet)
    }


def test_limit_shows_the_newest_and_says_how_many_there_are(jobs):
    out = run("--limit", "1")

    assert "Broken run" in out and "Local run" not in out
    assert out.splitlines()[-1] == "the newest 1 of 3 jobs"


def test_no_jobs(db):
    assert run() == "No jobs.\n"


def test_an_unknown_user_or_state_is_an_error(db):
    with pytest.raises(CommandError, match="no user has the email address 'nobody@example.com'"):
        run("--user", "nobody@example.com")
    with pytest.raises(CommandError, match="invalid choice: 'sleeping'"):
        run("--status", "sleeping")
