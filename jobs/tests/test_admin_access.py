"""Who gets into the admin: staff only. Anonymous visitors and signed-in non-staff are sent to its login."""

from __future__ import annotations

import pytest

from jobs.tests.conftest import make_job

pytestmark = pytest.mark.django_db

PAGES = [
    "/admin/",
    "/admin/auth/user/",
    "/admin/jobs/trainingjob/",
    "/admin/jobs/trainingjob/cost-report/",
    "/admin/jobs/trainingjob/cost-report/?format=csv",
    "/admin/jobs/basemodel/",
    "/admin/jobs/instancetype/",
    "/admin/datasets_app/dataset/",
    "/admin/accounts/profile/",
]


@pytest.mark.parametrize("url", PAGES)
def test_anonymous_visitors_are_sent_to_the_admin_login(client, url):
    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


@pytest.mark.parametrize("url", PAGES)
def test_signed_in_users_who_are_not_staff_get_no_admin_page(owner_client, url):
    response = owner_client.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


def test_non_staff_cannot_run_an_action(owner_client, owner):
    job = make_job(owner)

    response = owner_client.post(
        "/admin/jobs/trainingjob/", {"action": "stop_jobs", "_selected_action": [job.pk]}
    )

    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    job.refresh_from_db()
    assert job.status == "queued"


@pytest.mark.parametrize("url", PAGES)
def test_staff_see_every_page(client, staff, url):
    client.force_login(staff)

    response = client.get(url)

    assert response.status_code == 200


def test_the_admin_index_links_to_the_cost_report(client, staff):
    client.force_login(staff)

    response = client.get("/admin/")

    assert b'href="/admin/jobs/trainingjob/cost-report/"' in response.content


def test_staff_without_permission_on_jobs_get_403_from_the_report(client, owner):
    owner.is_staff = True
    owner.save()
    client.force_login(owner)

    assert client.get("/admin/jobs/trainingjob/cost-report/").status_code == 403
    assert b"cost-report" not in client.get("/admin/").content
