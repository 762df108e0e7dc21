"""Cost reports: SageMaker spend per user and per instance type per month; CSV no spreadsheet runs."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from jobs import pricing, reports
from jobs.models import Backend, InstanceType, TrainingJob
from jobs.tests.conftest import make_job

pytestmark = pytest.mark.django_db


def spent(owner, dataset, cost: str, when: datetime, instance: str = "ml.g5.xlarge", **fields) -> TrainingJob:
    job = make_job(
        owner,
        dataset,
        backend=Backend.SAGEMAKER,
        instance_type=InstanceType.objects.get(name=instance),
        cost_usd=Decimal(cost),
        **fields,
    )
    TrainingJob.objects.filter(pk=job.pk).update(created_at=when)
    return job


@pytest.fixture
def dataset(owner):
    from jobs.tests.conftest import make_ready_dataset

    return make_ready_dataset(owner)


def test_spend_is_grouped_per_month_by_user_and_by_instance_type(owner, outsider, dataset):
    spent(owner, dataset, "1.50", datetime(2026, 10, 3, tzinfo=UTC))
    spent(owner, dataset, "2.25", datetime(2026, 10, 31, 23, 59, tzinfo=UTC), instance="ml.g4dn.xlarge")
    spent(outsider, None, "0.10", datetime(2026, 10, 15, tzinfo=UTC))
    spent(owner, dataset, "4.00", datetime(2026, 11, 1, 0, 0, tzinfo=UTC))  # the next month, in UTC
    make_job(owner, dataset, cost_usd=Decimal("9"))  # local: costs nothing, not in the report
    spent(owner, dataset, "7.00", datetime(2026, 8, 1, tzinfo=UTC))  # before the period

    months = reports.monthly_report(date(2026, 9, 1), date(2026, 11, 1))

    assert [month.month for month in months] == [date(2026, 11, 1), date(2026, 10, 1)]
    november, october = months
    assert [(r.name, r.jobs, r.spend_usd) for r in october.by_user] == [
        ("alice@example.com", 2, Decimal("3.7500")),
        ("mallory@example.com", 1, Decimal("0.1000")),
    ]
    assert [(r.name, r.jobs, r.spend_usd) for r in october.by_instance_type] == [
        ("ml.g4dn.xlarge", 1, Decimal("2.2500")),
        ("ml.g5.xlarge", 2, Decimal("1.6000")),
    ]
    assert (october.jobs, october.spend_usd) == (3, Decimal("3.8500"))
    assert (november.jobs, november.spend_usd) == (1, Decimal("4.0000"))


def test_the_users_monthly_spend_annotation_matches_the_budget_check(owner, outsider, dataset):
    now = datetime(2026, 11, 20, tzinfo=UTC)
    spent(owner, dataset, "1.25", datetime(2026, 11, 2, tzinfo=UTC))
    spent(owner, dataset, "0.75", datetime(2026, 11, 19, tzinfo=UTC))
    spent(owner, dataset, "5.00", datetime(2026, 10, 30, tzinfo=UTC))

    users = get_user_model().objects.annotate(spend=reports.month_spend_subquery(now)).order_by("email")

    assert [(user.email, user.spend) for user in users] == [
        ("alice@example.com", pricing.month_to_date_spend(owner, now)),
        ("mallory@example.com", pricing.month_to_date_spend(outsider, now)),
    ]
    assert users[0].spend == Decimal("2.0000") and users[1].spend == 0


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+1", "'+1+1"),
        ("-1+1", "'-1+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("alice@example.com", "alice@example.com"),
        ("ml.g5.xlarge", "ml.g5.xlarge"),
        (Decimal("1.5000"), "1.5000"),
        (None, ""),
    ],
)
def test_a_csv_cell_that_a_spreadsheet_would_run_gets_a_leading_apostrophe(value, written):
    assert reports.csv_cell(value) == written


def test_the_csv_rows_are_escaped_and_quoted(owner, dataset):
    evil = get_user_model().objects.create_user(username="evil", email="=cmd|' /C calc'!A0@example.com")
    spent(evil, None, "1.00", datetime(2026, 11, 5, tzinfo=UTC))

    text = "".join(
        reports.csv_lines(reports.report_csv_rows(reports.BY_USER, date(2026, 11, 1), date(2026, 11, 1)))
    )

    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [
        ["month", "user", "jobs", "spend_usd"],
        ["2026-11", "'=cmd|' /C calc'!A0@example.com", "1", "1.0000"],
    ]


def test_months_back_counts_whole_calendar_months():
    assert reports.months_back(12, datetime(2026, 3, 15, tzinfo=UTC)) == (date(2025, 4, 1), date(2026, 3, 1))
    assert reports.months_back(1, datetime(2026, 1, 1, tzinfo=UTC)) == (date(2026, 1, 1), date(2026, 1, 1))


def test_text_table_pads_columns():
    table = reports.text_table(["ID", "NAME"], [[1, "a"], [20, "bbb"]], right={0})

    assert table.splitlines() == ["ID  NAME", "--  ----", " 1  a", "20  bbb"]
