"""The admin's cost report: spend per user and per instance type per month, and its CSV export."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from jobs.models import Backend, InstanceType, TrainingJob
from jobs.tests.conftest import make_job

pytestmark = pytest.mark.django_db

REPORT = "/admin/jobs/trainingjob/cost-report/"


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def spent(owner, cost: str, when: datetime, instance: str = "ml.g5.xlarge") -> TrainingJob:
    job = make_job(
        owner,
        backend=Backend.SAGEMAKER,
        instance_type=InstanceType.objects.get(name=instance),
        cost_usd=Decimal(cost),
    )
    TrainingJob.objects.filter(pk=job.pk).update(created_at=when)
    return job


def test_the_report_shows_each_month_per_user_and_per_instance_type(staff_client, owner, outsider):
    spent(owner, "1.50", datetime(2026, 10, 3, tzinfo=UTC))
    spent(outsider, "0.25", datetime(2026, 10, 9, tzinfo=UTC), instance="ml.g4dn.xlarge")
    spent(owner, "12.00", datetime(2026, 11, 2, tzinfo=UTC))

    response = staff_client.get(REPORT, {"start": "2026-10", "end": "2026-11"})

    assert response.status_code == 200
    body = response.content.decode()
    assert "October 2026 · $1.75 · 2 jobs" in body
    assert "November 2026 · $12.00 · 1 job" in body
    assert body.index("<h2>November 2026") < body.index("<h2>October 2026")
    assert "<td>mallory@example.com</td><td>1</td><td>0.25</td>" in body
    assert "<td>ml.g4dn.xlarge</td><td>1</td><td>0.25</td>" in body
    assert "<strong>$13.75</strong>" in body
    assert 'href="?start=2026-10&amp;end=2026-11&amp;by=instance_type&amp;format=csv"' in body


def test_the_csv_export_escapes_cells_a_spreadsheet_would_run(staff_client, owner):
    evil = get_user_model().objects.create_user(username="evil", email='=HYPERLINK("http://x")@example.com')
    spent(evil, "2.00", datetime(2026, 11, 5, tzinfo=UTC))
    spent(owner, "1.00", datetime(2026, 11, 6, tzinfo=UTC))
    InstanceType.objects.filter(name="ml.g5.xlarge").update(name="@SUM(1+1)")

    by_user = staff_client.get(REPORT, {"start": "2026-11", "end": "2026-11", "format": "csv"})
    by_instance = staff_client.get(
        REPORT, {"start": "2026-11", "end": "2026-11", "by": "instance_type", "format": "csv"}
    )

    assert by_user.status_code == 200 and by_user["Content-Type"] == "text/csv"
    assert (
        by_user["Content-Disposition"]
        == 'attachment; filename="llmtuner-spend-by-user-2026-11-to-2026-11.csv"'
    )
    rows = list(csv.reader(io.StringIO(b"".join(by_user.streaming_content).decode())))
    assert rows == [
        ["month", "user", "jobs", "spend_usd"],
        ["2026-11", '\'=HYPERLINK("http://x")@example.com', "1", "2.0000"],
        ["2026-11", "alice@example.com", "1", "1.0000"],
    ]
    rows = list(csv.reader(io.StringIO(b"".join(by_instance.streaming_content).decode())))
    assert rows == [["month", "instance_type", "jobs", "spend_usd"], ["2026-11", "'@SUM(1+1)", "2", "3.0000"]]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"start": "October"}, "Enter a month as YYYY-MM."),
        ({"start": "2026-11", "end": "2026-10"}, "The last month must not come before the first."),
        ({"by": "planet"}, "Select a valid choice."),
        ({"end": "9999-12"}, "Enter a month up to 9999-11."),
        ({"start": "9999-12", "end": "9999-12"}, "Enter a month up to 9999-11."),
    ],
)
def test_bad_parameters_are_named_and_the_default_period_is_shown(staff_client, query, message):
    response = staff_client.get(REPORT, {**query, "format": "csv"})

    assert response.status_code == 400
    assert message in response.content.decode()
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("query", [{"end": "9999-12"}, {"start": "9999-12", "end": "9999-12"}])
def test_a_month_past_the_calendars_end_is_a_form_error_on_the_page_too(staff_client, query):
    response = staff_client.get(REPORT, query)

    assert response.status_code == 400
    assert "Enter a month up to 9999-11." in response.content.decode()


def test_the_widest_period_the_calendar_holds_is_reported(staff_client):
    for query in (
        {"start": "0001-01", "end": "9999-11"},
        {"start": "0001-01", "end": "9999-11", "format": "csv"},
    ):
        assert staff_client.get(REPORT, query).status_code == 200, query
