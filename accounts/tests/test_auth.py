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


def test_password_reset_by_email(client, owner, settings):
    response = client.post("/accounts/password/reset/", {"email": owner.email})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    key_path = re.escape(settings.SITE_URL) + r"(/accounts/password/reset/key/\S+/)"
    link = re.search(key_path, mail.outbox[0].body)[1]
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


def test_home_shows_visitors_the_landing_page_and_sends_users_to_the_dashboard(client, owner):
    assert client.get("/").status_code == 200
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


# --- Links in emails come from SITE_URL, never from the request's Host header --------------------

HOSTILE_HOST = "127.0.0.1:6666"


@pytest.fixture
def hostile_host_allowed(settings):
    # As if the Host header got past ALLOWED_HOSTS (a wildcard, or the proxy passing it through).
    settings.ALLOWED_HOSTS = ["testserver", "127.0.0.1"]
    settings.SITE_URL = "https://tuner.example.com"
    return settings


def links_in(message) -> list[str]:
    return re.findall(r"https?://\S+", message.body)


def assert_every_link_is_on_the_site(message, site_url: str):
    assert links_in(message), message.body
    assert all(link.startswith(site_url + "/") for link in links_in(message)), links_in(message)
    assert HOSTILE_HOST not in message.body and HOSTILE_HOST not in message.subject


def test_a_password_reset_asked_with_a_hostile_host_links_to_the_site(client, owner, hostile_host_allowed):
    client.post("/accounts/password/reset/", {"email": owner.email}, HTTP_HOST=HOSTILE_HOST)

    (message,) = mail.outbox
    assert_every_link_is_on_the_site(message, "https://tuner.example.com")
    assert "https://tuner.example.com/accounts/password/reset/key/" in message.body


def test_an_email_confirmation_sent_with_a_hostile_host_links_to_the_site(client, hostile_host_allowed):
    client.post(
        "/accounts/signup/",
        {"email": "new@example.com", "password1": PASSWORD, "password2": PASSWORD},
        HTTP_HOST=HOSTILE_HOST,
    )

    (message,) = mail.outbox
    assert_every_link_is_on_the_site(message, "https://tuner.example.com")
    assert "https://tuner.example.com/accounts/confirm-email/" in message.body


def test_a_sign_up_for_a_taken_address_sent_with_a_hostile_host_links_to_the_site(
    client, owner, hostile_host_allowed
):
    # Production's setting: the sign-up then answers as for a new address and emails the owner.
    hostile_host_allowed.ACCOUNT_EMAIL_VERIFICATION = "mandatory"
    client.post(
        "/accounts/signup/",
        {"email": owner.email, "password1": PASSWORD, "password2": PASSWORD},
        HTTP_HOST=HOSTILE_HOST,
    )

    (message,) = mail.outbox
    assert_every_link_is_on_the_site(message, "https://tuner.example.com")
