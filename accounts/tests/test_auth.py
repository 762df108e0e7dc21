"""Sign-up, log-in, log-out, password reset and change, rate limits."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core import mail

from conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_sign_up_logs_in_and_lands_on_the_dashboard(client):
    response = client.post(
        "/accounts/signup/",
        {"email": "new@example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    assert get_user_model().objects.filter(email="new@example.com").exists()
    dashboard = client.get("/dashboard/")
    assert dashboard.status_code == 200
    assert b"Upload a dataset" in dashboard.content


def test_sign_up_with_mismatched_passwords_says_so(client):
    response = client.post(
        "/accounts/signup/",
        {"email": "new@example.com", "password1": PASSWORD, "password2": PASSWORD + "x"},
    )
    assert response.status_code == 200
    assert b"You must type the same password each time" in response.content
    assert not get_user_model().objects.filter(email="new@example.com").exists()


def test_log_in_and_log_out(client, owner):
    response = client.post("/accounts/login/", {"login": owner.email, "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    assert client.get("/dashboard/").status_code == 200

    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert client.get("/dashboard/").status_code == 302


def test_wrong_password_is_refused(client, owner):
    response = client.post("/accounts/login/", {"login": owner.email, "password": "nope-nope-nope"})
    assert response.status_code == 200
    assert b"email address and/or password you specified are not correct" in response.content


def test_repeated_failed_logins_are_rate_limited(client, owner):
    for attempt in range(5):
        response = client.post("/accounts/login/", {"login": owner.email, "password": f"wrong-{attempt}"})
        assert b"Too many failed login attempts" not in response.content
    # Past five failures for this email, even the right password is refused for a while.
    response = client.post("/accounts/login/", {"login": owner.email, "password": PASSWORD})
    assert response.status_code == 200
    assert b"Too many failed login attempts" in response.content
    assert client.get("/dashboard/").status_code == 302


def test_password_reset_by_email(client, owner):
    response = client.post("/accounts/password/reset/", {"email": owner.email})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/accounts/password/reset/key/\S+/)", mail.outbox[0].body).group(1)
    form_page = client.get(link, follow=True)
    assert form_page.status_code == 200
    new_password = "an0ther-long-passphrase!"
    response = client.post(
        form_page.redirect_chain[-1][0], {"password1": new_password, "password2": new_password}
    )
    assert response.status_code == 302
    owner.refresh_from_db()
    assert owner.check_password(new_password)


def test_password_change(owner_client, owner):
    new_password = "yet-another-passphrase-9"
    response = owner_client.post(
        "/accounts/password/change/",
        {"oldpassword": PASSWORD, "password1": new_password, "password2": new_password},
    )
    assert response.status_code == 302
    owner.refresh_from_db()
    assert owner.check_password(new_password)


def test_pages_need_a_login(client):
    for url in ("/dashboard/", "/settings/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


def test_home_sends_visitors_to_log_in_and_users_to_the_dashboard(client, owner):
    assert client.get("/")["Location"] == "/accounts/login/"
    client.force_login(owner)
    assert client.get("/")["Location"] == "/dashboard/"


def test_settings_turn_off_notification_emails(owner_client, owner):
    response = owner_client.post("/settings/", {})
    assert response.status_code == 302
    owner.profile.refresh_from_db()
    assert owner.profile.email_notifications is False


def test_staff_see_the_admin_link_and_others_do_not(client, owner, staff):
    client.force_login(owner)
    assert b'href="/admin/"' not in client.get("/dashboard/").content
    client.force_login(staff)
    assert b'href="/admin/"' in client.get("/dashboard/").content


def test_no_google_button_when_google_is_not_configured(client):
    assert b"Google" not in client.get("/accounts/login/").content
