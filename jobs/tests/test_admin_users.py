"""The users admin: each user's monthly budget, this month's SageMaker spend and job count, in one query."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import get_profile
from conftest import make_user
from jobs import pricing
from jobs.models import Backend, InstanceType, TrainingJob
from jobs.tests.conftest import make_job, make_ready_dataset

pytestmark = pytest.mark.django_db


def row_of(body: str, email: str) -> str:
    match = re.search(rf"<tr>(?:(?!</tr>).)*{re.escape(email)}(?:(?!</tr>).)*</tr>", body, re.S)
    assert match, email
    return re.sub(r"<[^>]+>", "|", match.group(0))


def test_the_user_list_shows_budget_spend_this_month_and_jobs(client, staff, owner, outsider, settings):
    settings.DEFAULT_MONTHLY_BUDGET_USD = "50"
    profile = get_profile(owner)
    profile.monthly_budget_usd = Decimal("120.00")
    profile.save()
    dataset = make_ready_dataset(owner)
    g5 = InstanceType.objects.get(name="ml.g5.xlarge")
    make_job(owner, dataset, backend=Backend.SAGEMAKER, instance_type=g5, cost_usd=Decimal("1.25"))
    make_job(owner, dataset, backend=Backend.SAGEMAKER, instance_type=g5, cost_usd=Decimal("2.50"))
    last_month = make_job(owner, dataset, backend=Backend.SAGEMAKER, instance_type=g5, cost_usd=Decimal("9"))
    TrainingJob.objects.filter(pk=last_month.pk).update(
        created_at=pricing.month_start() - timezone.timedelta(days=1)
    )
    make_job(owner, dataset)  # local
    client.force_login(staff)

    body = client.get("/admin/auth/user/").content.decode()

    assert pricing.month_to_date_spend(owner) == Decimal("3.75")
    alice = row_of(body, "alice@example.com")
    assert "|120.00|" in alice and "|3.75|" in alice and "|4|" in alice
    mallory = row_of(body, "mallory@example.com")
    assert "|50.00|" in mallory and "|0.00|" in mallory and "|0|" in mallory  # no profile yet: the default


def test_the_user_list_does_not_query_per_user(client, staff):
    client.force_login(staff)
    client.get("/admin/auth/user/")  # the signed-in user is cached from here on
    with CaptureQueriesContext(connection) as one_user:
        client.get("/admin/auth/user/")
    for n in range(6):
        user = make_user(f"user{n}@example.com")
        make_job(user)

    with CaptureQueriesContext(connection) as seven_users:
        response = client.get("/admin/auth/user/")

    assert response.status_code == 200 and "user5@example.com" in response.content.decode()
    assert len(seven_users.captured_queries) == len(one_user.captured_queries)


def test_the_budget_is_edited_on_the_user_page(client, staff, owner):
    client.force_login(staff)

    page = client.get(f"/admin/auth/user/{owner.pk}/change/")

    assert page.status_code == 200
    assert 'name="profile-0-monthly_budget_usd"' in page.content.decode()
