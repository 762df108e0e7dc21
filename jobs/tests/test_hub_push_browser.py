"""Push to the Hub in real headless Chromium: the token saved in the settings, the push asked for on
the job page (an htmx form), its result swapped in by polling once the worker is done."""

from __future__ import annotations

import io

import pytest

from conftest import make_user
from datasets_app.tests.test_browser import log_in
from jobs import hub_push, tasks
from jobs.models import HubPush
from jobs.tests.conftest import completed, make_job, scratch_base_model
from jobs.tests.stand_in_hub import StandInHub
from llmtuner import storage

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TOKEN = "hf_BrowserWriteToken12345"


def test_a_user_saves_a_token_and_pushes_a_model_from_the_job_page(page, settings, monkeypatch):
    monkeypatch.setattr(
        tasks.push_to_hub, "apply_async", lambda *args, **kwargs: None
    )  # the test is the worker
    owner = make_user("alice@example.com")
    scratch_base_model()
    job = completed(make_job(owner, name="Proverbs"))
    storage.save(f"{job.model_prefix}/config.json", io.BytesIO(b"{}"))
    log_in(page, "alice@example.com")

    page.goto("/settings/")
    page.locator("input[name=token]").fill(TOKEN)
    page.locator("[data-action=save-hub-token]").click()
    page.locator("[data-hub-token-saved]").wait_for()
    assert TOKEN not in page.content()

    with StandInHub(accounts={TOKEN: ("alice", "write")}) as hub:
        settings.HF_ENDPOINT = hub.url
        page.goto(f"/jobs/{job.pk}/")
        page.locator("input[name=repo_name]").fill("proverbs-model")
        page.locator("[data-action=hub-push]").click()
        page.locator('[data-hub-push-status="queued"]').wait_for()

        hub_push.run_push(HubPush.objects.get().pk)

        page.locator('[data-hub-push-status="done"]').wait_for(timeout=10_000)
        link = page.get_by_role("link", name="alice/proverbs-model")
        assert link.get_attribute("href") == f"{hub.url}/alice/proverbs-model"
        assert hub.repos["alice/proverbs-model"]["private"] is True
