"""The Hub check as a person sees it: choosing a model on the new-job form shows, within seconds,
whether the worker can fetch it, in real headless Chromium against a stand-in Hub on localhost."""

from __future__ import annotations

import pytest

from conftest import make_user
from datasets_app.tests.test_browser import eager_tasks, log_in  # noqa: F401  (a fixture)
from jobs.models import TrainingJob
from jobs.tests.conftest import make_ready_dataset, scratch_base_model
from jobs.tests.test_hub_check import catalogue_model, hub  # noqa: F401  (a fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.services,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


def test_choosing_a_hub_model_shows_whether_the_worker_can_fetch_it(page, hub, eager_tasks):  # noqa: F811
    owner = make_user("alice@example.com")
    dataset = make_ready_dataset(owner)
    scratch_base_model()
    catalogue_model("acme/open-model")
    gated = catalogue_model("acme/gated-model")
    log_in(page, "alice@example.com")

    page.goto(f"/jobs/new/?dataset={dataset.pk}&base_model={gated.pk}")
    refusal = page.locator('[data-hub-check="refused"]')
    refusal.wait_for(timeout=10_000)
    assert "is gated and the worker has no HF_TOKEN" in refusal.inner_text()

    page.get_by_role("button", name="Launch").click()
    page.locator("[data-estimate-errors]", has_text="is gated and the worker has no HF_TOKEN").wait_for()
    assert not TrainingJob.objects.exists()

    page.locator("#id_base_model").select_option(label="open-model · 124M parameters · 1,024 tokens · mit")
    found = page.locator('[data-hub-check="ok"]')
    found.wait_for(timeout=10_000)
    assert "acme/open-model is on the Hugging Face Hub (public)." in found.inner_text()
