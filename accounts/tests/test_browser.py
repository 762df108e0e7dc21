"""A new user, in real headless Chromium: sign up, log out, log in, see the dashboard."""

from __future__ import annotations

import pytest

from conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_sign_up_log_out_log_in(page):
    page.goto("/")
    page.get_by_role("link", name="Sign up").first.click()
    page.fill("input[name=email]", "newcomer@example.com")
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.get_by_role("button", name="Sign Up").click()
    page.wait_for_url("**/dashboard/")
    assert page.get_by_text("Upload a dataset").is_visible()

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/accounts/login/")

    page.fill("input[name=login]", "newcomer@example.com")
    page.fill("input[name=password]", PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_url("**/dashboard/")
    assert page.get_by_role("heading", name="Welcome").is_visible()
    assert page.get_by_text("newcomer@example.com").is_visible()
