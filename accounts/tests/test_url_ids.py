"""An id in a URL beyond what the database can hold is a 404, like any other missing id, never a 500."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.tests.test_isolation import ID_ROUTES, ROUTES, Route
from llmtuner.converters import BIGINT_MAX

TOO_BIG = BIGINT_MAX + 1  # 2**63


def beyond_bigint(route: Route) -> str:
    # The other arguments (a dataset's split) take a value that reverses.
    kwargs = {name: TOO_BIG if converter == "IdConverter" else "train" for name, converter in route.kwargs}
    return reverse(route.name, kwargs=kwargs)


@pytest.mark.django_db
@pytest.mark.parametrize("route", ID_ROUTES, ids=str)
def test_an_id_beyond_bigint_is_a_404_for_a_signed_in_user(route, owner_client):
    owner_client.raise_request_exception = False

    for method in (owner_client.get, owner_client.post):
        assert method(beyond_bigint(route)).status_code == 404, route


@pytest.mark.django_db
def test_the_largest_bigint_is_an_ordinary_missing_id(owner_client):
    assert owner_client.get(f"/jobs/{BIGINT_MAX}/progress/").status_code == 404
    assert owner_client.get(f"/datasets/{BIGINT_MAX}/").status_code == 404


def test_every_id_in_our_urls_goes_through_the_id_converter():
    kinds = [(f"{route} <{name}>", kind) for route in ROUTES for name, kind in route.kwargs]
    assert [name for name, kind in kinds if kind == "IntConverter"] == []
    assert len(ID_ROUTES) >= 19  # it did find them
