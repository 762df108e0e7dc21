"""Sessions and the signed-in user come from the shared cache, and never outlive their rows.

Every page, and every 2 s poll of an open job page, needs both; the cache saves those two
database queries (accounts/sessions.py, accounts/backends.py). What a user sees must not change:
signing out, a new password or a deactivated account take effect on the next request, an
emptied cache signs nobody out, and a cache that cannot be reached costs queries, not pages.
"""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from conftest import PASSWORD

pytestmark = pytest.mark.django_db

UNREACHABLE_CACHE = {"default": {"BACKEND": "llmtuner.cache.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}}


def signed_in(client: Client, user) -> Client:
    response = client.post("/accounts/login/", {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/dashboard/").status_code == 200  # the session and the user are cached now
    return client


def test_a_signed_in_page_reads_neither_session_nor_user_from_the_database(client, owner):
    signed_in(client, owner)
    with CaptureQueriesContext(connection) as warm:
        client.get("/dashboard/")
    cache.clear()
    with CaptureQueriesContext(connection) as cold:
        client.get("/dashboard/")

    tables = " ".join(query["sql"] for query in warm.captured_queries)
    assert "django_session" not in tables and "auth_user" not in tables
    assert len(cold.captured_queries) == len(warm.captured_queries) + 2


def test_signing_out_ends_the_session_even_for_a_copy_of_its_cookie(client, owner):
    signed_in(client, owner)
    stolen = Client()
    stolen.cookies = client.cookies.__class__(client.cookies)

    client.post("/accounts/logout/")

    assert stolen.get("/dashboard/").status_code == 302


def test_a_new_password_ends_the_other_sessions_at_once(client, owner):
    other_browser = signed_in(Client(), owner)
    signed_in(client, owner)

    response = client.post(
        "/accounts/password/change/",
        {"oldpassword": PASSWORD, "password1": "A-new-pass-phrase-42", "password2": "A-new-pass-phrase-42"},
    )

    assert response.status_code == 302
    assert client.get("/dashboard/").status_code == 200  # the session that changed it stays in
    assert other_browser.get("/dashboard/").status_code == 302


def test_a_deactivated_account_is_signed_out_on_its_next_request(client, owner):
    signed_in(client, owner)

    owner.is_active = False
    owner.save()

    assert client.get("/dashboard/").status_code == 302


def test_an_emptied_cache_signs_nobody_out(client, owner):
    signed_in(client, owner)

    cache.clear()

    assert client.get("/dashboard/").status_code == 200


def test_pages_still_open_when_the_cache_cannot_be_reached(client, owner, settings):
    signed_in(client, owner)

    settings.CACHES = UNREACHABLE_CACHE

    response = client.get("/dashboard/")
    assert response.status_code == 200
    assert owner.email.encode() in response.content
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/dashboard/").status_code == 302
