"""A first visit: the signed-out home page says what the product does; emails carry its name and
link only to SITE_URL."""

from __future__ import annotations

import re

import pytest
from django.core import mail

from conftest import PASSWORD

pytestmark = pytest.mark.django_db

SITE = "https://tuner.example.com"


def test_a_signed_out_visitor_sees_what_the_product_does_with_sign_up_and_sign_in(client):
    response = client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Fine-tune a language model on your own data" in html
    assert "Upload a dataset" in html and "See the time and cost first" in html
    assert 'href="/accounts/signup/"' in html
    assert 'href="/accounts/login/"' in html


def test_the_brand_link_leads_a_visitor_home(client):
    assert '<a class="brand" href="/">' in client.get("/accounts/login/").content.decode()


@pytest.fixture
def site(settings):
    settings.SITE_URL = SITE
    return settings


def assert_product_email(message):
    links = re.findall(r"https?://\S+", message.body)
    assert links, message.body
    assert all(link.startswith(SITE + "/") for link in links), links
    assert message.subject.startswith("[LLM Tuner] "), message.subject
    assert "LLM Tuner" in message.body
    assert "example.com" not in message.body.replace("tuner.example.com", "").replace("@example.com", "")


def test_the_email_confirmation_carries_the_product_name_and_links_to_the_site(client, site):
    client.post(
        "/accounts/signup/", {"email": "new@example.com", "password1": PASSWORD, "password2": PASSWORD}
    )

    (message,) = mail.outbox
    assert_product_email(message)
    assert f"{SITE}/accounts/confirm-email/" in message.body
    assert message.body.startswith("Hello from LLM Tuner!")
    assert message.body.rstrip().endswith(f"Thank you for using LLM Tuner!\n{SITE}/")


def test_the_password_reset_carries_the_product_name_and_links_to_the_site(client, owner, site):
    client.post("/accounts/password/reset/", {"email": owner.email})

    (message,) = mail.outbox
    assert_product_email(message)
    assert f"{SITE}/accounts/password/reset/key/" in message.body
