"""Google sign-in, offline: the token exchange is faked with a locally signed id_token."""

from __future__ import annotations

import time
from unittest import mock
from urllib.parse import parse_qs, urlparse

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth import get_user_model

pytestmark = pytest.mark.django_db

CLIENT_ID = "test-client.apps.googleusercontent.com"
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(autouse=True)
def google_configured(settings):
    settings.GOOGLE_CLIENT_ID = CLIENT_ID
    settings.SOCIALACCOUNT_PROVIDERS = {
        "google": {
            **settings.SOCIALACCOUNT_PROVIDERS["google"],
            "APPS": [{"client_id": CLIENT_ID, "secret": "test-secret", "key": ""}],
        }
    }


def id_token(email: str, sub: str) -> str:
    now = int(time.time())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": CLIENT_ID,
        "sub": sub,
        "email": email,
        "email_verified": True,
        "name": "Ana Example",
        "given_name": "Ana",
        "family_name": "Example",
        "iat": now,
        "exp": now + 3600,
    }
    return jwt.encode(claims, SIGNING_KEY, algorithm="RS256", headers={"kid": "test-key"})


def fake_token_endpoint(token: str):
    def request(self, method, url, *args, **kwargs):
        assert url == "https://oauth2.googleapis.com/token", url
        response = requests.Response()
        response.status_code = 200
        response.headers["Content-Type"] = "application/json"
        response._content = (
            b'{"access_token": "ya29.test", "expires_in": 3599, "token_type": "Bearer", '
            b'"scope": "openid email profile", "id_token": "' + token.encode() + b'"}'
        )
        return response

    return request


def sign_in_with_google(client, email: str, sub: str):
    start = client.post("/accounts/google/login/")
    assert start.status_code == 302
    authorize = urlparse(start["Location"])
    assert authorize.netloc == "accounts.google.com"
    state = parse_qs(authorize.query)["state"][0]
    with mock.patch.object(requests.Session, "request", fake_token_endpoint(id_token(email, sub))):
        return client.get("/accounts/google/login/callback/", {"code": "auth-code", "state": state})


def test_login_page_shows_google_when_configured(client):
    assert b"Google" in client.get("/accounts/login/").content


def test_first_google_sign_in_creates_the_account_and_lands_on_the_dashboard(client):
    response = sign_in_with_google(client, "ana@example.com", "1001")
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    user = get_user_model().objects.get(email="ana@example.com")
    assert user.socialaccount_set.get().uid == "1001"
    assert client.get("/dashboard/").status_code == 200


def test_second_google_sign_in_logs_into_the_same_account(client):
    sign_in_with_google(client, "ana@example.com", "1001")
    client.post("/accounts/logout/")
    response = sign_in_with_google(client, "ana@example.com", "1001")
    assert response["Location"] == "/dashboard/"
    assert get_user_model().objects.filter(email="ana@example.com").count() == 1
    assert client.get("/dashboard/").status_code == 200
