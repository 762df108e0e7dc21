"""The login's brute-force limits: the admin sits behind them, they count each client behind the
proxy on its own, and a stranger cannot lock a user out of their account."""

from __future__ import annotations

import pytest

from accounts.tests.test_settings import PRODUCTION_ENV, run_manage
from conftest import PASSWORD

pytestmark = pytest.mark.django_db

LOCKED = b"Too many failed login attempts"
PROXY = "10.0.0.2"  # the production proxy, the web process's only peer


def site_login(client, email: str, password: str, client_ip: str | None = None, forged: str = ""):
    """A login as it reaches the web process: through the proxy when `client_ip` is given."""
    headers = {}
    if client_ip:
        # The proxy appends the address it saw to whatever the client sent.
        headers = {"REMOTE_ADDR": PROXY, "HTTP_X_FORWARDED_FOR": f"{forged}, {client_ip}".lstrip(", ")}
    return client.post("/accounts/login/", {"login": email, "password": password}, **headers)


def signed_in(client) -> bool:
    return client.get("/dashboard/").status_code == 200


# --- The admin's login --------------------------------------------------------------------------


def test_thirty_wrong_passwords_at_the_admin_login_then_the_right_one_does_not_sign_in(client, staff):
    for attempt in range(30):
        client.post("/admin/login/", {"username": staff.username, "password": f"wrong-{attempt}"})

    response = client.post("/admin/login/?next=/admin/", {"username": staff.username, "password": PASSWORD})

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=%2Fadmin%2F"
    assert client.get("/admin/").status_code == 302


def test_an_account_locked_at_the_site_login_is_locked_at_the_admin_too(client, staff):
    for attempt in range(5):
        site_login(client, staff.email, f"wrong-{attempt}")

    client.post("/admin/login/", {"username": staff.username, "password": PASSWORD})
    at_the_door_it_is_sent_to = site_login(client, staff.email, PASSWORD)

    assert LOCKED in at_the_door_it_is_sent_to.content
    assert client.get("/admin/").status_code == 302


def test_staff_reach_the_admin_page_they_asked_for_after_signing_in(client, staff):
    to_admin_login = client.get("/admin/jobs/trainingjob/")
    to_site_login = client.get(to_admin_login["Location"])
    assert to_site_login["Location"] == "/accounts/login/?next=%2Fadmin%2Fjobs%2Ftrainingjob%2F"

    form = {"login": staff.email, "password": PASSWORD, "next": "/admin/jobs/trainingjob/"}
    response = client.post(to_site_login["Location"], form)

    assert response["Location"] == "/admin/jobs/trainingjob/"
    assert client.get("/admin/jobs/trainingjob/").status_code == 200


def test_signed_in_users_who_are_not_staff_are_refused_the_admin_login(owner_client):
    assert owner_client.get("/admin/login/").status_code == 403


# --- Clients behind the proxy -------------------------------------------------------------------


def trusted_proxies(**env: str) -> str:
    code = "from django.conf import settings; print(settings.ALLAUTH_TRUSTED_PROXY_COUNT)"
    result = run_manage("shell", "-c", code, env={**PRODUCTION_ENV, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[-1]


def test_production_trusts_one_proxy_unless_told_how_many():
    assert trusted_proxies() == "1"
    assert trusted_proxies(TRUSTED_PROXY_COUNT="2") == "2"
    assert trusted_proxies(BEHIND_PROXY="false") == "0"


@pytest.fixture
def behind_one_proxy(settings):
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 1


def test_clients_behind_the_proxy_are_limited_each_on_their_own(client, owner, behind_one_proxy):
    # Ten failed logins a minute from one client, each for another account.
    for number in range(10):
        site_login(client, f"nobody{number}@example.com", "guess", client_ip="203.0.113.7")
    assert LOCKED in site_login(client, "nobody@example.com", "guess", client_ip="203.0.113.7").content

    response = site_login(client, owner.email, PASSWORD, client_ip="198.51.100.20")

    assert response.status_code == 302
    assert signed_in(client)


def test_a_forged_forwarded_for_header_does_not_escape_the_limit(client, owner, behind_one_proxy):
    for number in range(10):
        forged = f"192.0.2.{number}"
        site_login(client, f"nobody{number}@example.com", "guess", client_ip="203.0.113.7", forged=forged)

    response = site_login(client, owner.email, PASSWORD, client_ip="203.0.113.7", forged="192.0.2.200")

    assert LOCKED in response.content
    assert not signed_in(client)


def test_without_a_trusted_proxy_the_forwarded_for_header_is_ignored(client, owner, settings):
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 0
    for number in range(10):
        headers = {"REMOTE_ADDR": "203.0.113.7", "HTTP_X_FORWARDED_FOR": f"192.0.2.{number}"}
        client.post("/accounts/login/", {"login": f"nobody{number}@example.com", "password": "x"}, **headers)

    response = client.post(
        "/accounts/login/",
        {"login": owner.email, "password": PASSWORD},
        REMOTE_ADDR="203.0.113.7",
        HTTP_X_FORWARDED_FOR="192.0.2.200",
    )

    assert LOCKED in response.content


def test_sign_ups_behind_the_proxy_are_capped_per_client_not_site_wide(client, behind_one_proxy, settings):
    limit = int(settings.ACCOUNT_RATE_LIMITS["signup"].split("/")[0])

    def sign_up(email: str, client_ip: str):
        form = {"email": email, "password1": PASSWORD, "password2": PASSWORD}
        response = client.post("/accounts/signup/", form, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=client_ip)
        client.logout()
        return response

    for number in range(limit):
        assert sign_up(f"bot{number}@example.com", "203.0.113.7").status_code == 302, number
    assert sign_up("one-more@example.com", "203.0.113.7").status_code == 429

    assert sign_up("someone-else@example.com", "198.51.100.20").status_code == 302


def test_a_request_that_skipped_an_outer_proxy_is_limited_under_the_address_it_came_from(
    client, owner, settings
):
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 2  # a CDN, then the load balancer
    client.raise_request_exception = False
    for number in range(10):
        response = site_login(client, f"nobody{number}@example.com", "guess", client_ip="203.0.113.7")
        assert response.status_code == 200, number

    assert LOCKED in site_login(client, owner.email, PASSWORD, client_ip="203.0.113.7").content
    assert site_login(client, owner.email, PASSWORD, client_ip="198.51.100.20").status_code == 302


# --- The per-account lockout --------------------------------------------------------------------


def test_a_stranger_with_five_wrong_passwords_does_not_lock_the_user_out(client, owner, behind_one_proxy):
    for attempt in range(5):
        site_login(client, owner.email, f"wrong-{attempt}", client_ip="203.0.113.66")
    assert LOCKED in site_login(client, owner.email, PASSWORD, client_ip="203.0.113.66").content

    response = site_login(client, owner.email, PASSWORD, client_ip="198.51.100.20")

    assert response.status_code == 302
    assert signed_in(client)


def account_ceiling(settings, rate: str) -> None:
    settings.ACCOUNT_RATE_LIMITS = {**settings.ACCOUNT_RATE_LIMITS, "login_failed_account": rate}


def test_guesses_from_many_addresses_are_capped_per_account(client, owner, behind_one_proxy, settings):
    # The configured ceiling is 100 an hour; 20 keeps the test inside the test cache's 300 entries.
    ceiling = 20
    account_ceiling(settings, f"{ceiling}/h/key")
    for attempt in range(ceiling):
        address = f"203.0.{attempt // 5}.{attempt % 5 + 1}"  # five guesses from each address
        response = site_login(client, owner.email, f"wrong-{attempt}", client_ip=address)
        assert LOCKED not in response.content, attempt

    response = site_login(client, owner.email, PASSWORD, client_ip="198.51.100.20")

    assert LOCKED in response.content
    assert not signed_in(client)


def test_successful_logins_never_reach_the_account_ceiling(client, owner, behind_one_proxy, settings):
    account_ceiling(settings, "3/h/key")
    for number in range(5):
        response = site_login(client, owner.email, PASSWORD, client_ip=f"198.51.100.{number + 1}")
        assert response.status_code == 302, number
        client.logout()
