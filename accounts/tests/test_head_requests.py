"""HEAD is answered like GET, without a body, on every URL of ours, and never changes anything.

Link checkers, uptime monitors and proxies ask HEAD; every page used to answer them 405. The
URL configuration is walked as in test_isolation, so a view added later is covered too; a URL
that only takes POST stays 405 for HEAD.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.tests.test_isolation import ROUTES, Route, _client, _make_objects, fill, snapshot


def url_for(route: Route, objects: dict) -> str:
    return fill(route, objects) if route.kwargs else reverse(route.name)


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.mark.django_db
@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_head_answers_as_get_does_with_no_body_and_changes_nothing(route, owner):
    objects = _make_objects(owner)
    url = url_for(route, objects)
    owner_client = _client(owner)
    before = snapshot(objects)

    head = owner_client.head(url)

    assert snapshot(objects) == before, f"HEAD {url} changed something"
    get = owner_client.get(url)
    assert head.status_code == get.status_code, (url, head.status_code, get.status_code)
    get.close()  # a download's open file
    assert body(head) == b""
    assert head.get("Content-Type") == get.get("Content-Type"), url
    if get.status_code in (301, 302):
        assert head["Location"] == get["Location"], url


@pytest.mark.django_db
def test_a_post_only_url_stays_405_for_head(owner, owner_client):
    objects = _make_objects(owner)
    before = snapshot(objects)

    response = owner_client.head(reverse("jobs:retry", kwargs={"pk": objects["job"].pk}))

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert snapshot(objects) == before


ANONYMOUS_PAGES = ["/", "/accounts/login/", "/accounts/signup/", "/dashboard/", "/admin/", "/health/"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ANONYMOUS_PAGES)
def test_head_from_an_anonymous_visitor_answers_as_get_does(path):
    head, get = Client().head(path), Client().get(path)

    assert head.status_code == get.status_code, path
    assert body(head) == b""
