"""A person asks a completed job's playground in real headless Chromium; a real worker answers."""

from __future__ import annotations

import pytest

from conftest import PASSWORD
from jobs.backends import local
from jobs.models import JobStatus, PlaygroundRun, PlaygroundStatus
from jobs.tests.conftest import make_job

pytestmark = [pytest.mark.browser, pytest.mark.services, pytest.mark.slow]


@pytest.fixture
def worker_model_cache(tmp_path, monkeypatch, settings):
    # Asked for before `celery_worker_process`, so the worker inherits it.
    folder = tmp_path / "worker-model-cache"
    monkeypatch.setenv("PLAYGROUND_CACHE_DIR", str(folder))
    settings.PLAYGROUND_CACHE_DIR = folder
    return folder


def log_in(page, email: str) -> None:
    page.goto("/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_url("**/dashboard/")


def test_ask_the_playground_and_see_both_answers(worker_model_cache, celery_worker_process, page, owner):
    job = make_job(owner)
    local.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED, job.status_message
    log_in(page, owner.email)

    page.goto(f"/jobs/{job.pk}/playground/")
    assert page.get_by_text("No prompts yet").is_visible()
    assert page.get_by_text("untrained baseline").is_visible()
    page.fill("textarea[name=prompt]", "The quick brown <b>")
    page.fill("input[name=max_new_tokens]", "16")
    page.fill("input[name=temperature]", "0")
    page.get_by_role("button", name="Generate").click()

    # The pending row polls every 2 s until the worker has answered with both models.
    row = page.locator("[data-run]").first
    row.locator("[data-prompt]").get_by_text("The quick brown <b>").wait_for()
    page.locator('[data-run-status="done"]').wait_for(timeout=90_000)
    tuned = page.locator('[data-output="tuned"]').inner_text()
    base = page.locator('[data-output="base"]').inner_text()
    assert tuned.strip() and base.strip()
    assert page.get_by_role("heading", name="Untrained baseline").is_visible()
    assert page.locator("textarea[name=prompt]").input_value() == "The quick brown <b>"

    run = PlaygroundRun.objects.get(job=job)
    assert run.status == PlaygroundStatus.DONE
    assert (tuned.strip(), base.strip()) == (run.tuned_output.strip(), run.base_output.strip())

    page.reload()  # the run is kept, and shown without polling
    assert page.locator('[data-run-status="done"]').count() == 1
    assert page.locator("[hx-trigger]").count() == 0

    # Blind: the same worker answers, the page shows A and B until the better one is picked.
    page.locator("input[name=blind]").check()
    page.fill("textarea[name=prompt]", "A stitch in time")
    page.get_by_role("button", name="Generate").click()
    page.locator('[data-run-status="done"] [data-blind]').wait_for(timeout=90_000)
    blind = PlaygroundRun.objects.get(job=job, blind=True)
    row = page.locator(f"#run-{blind.pk}")
    assert row.get_by_role("heading", name="Answer A").is_visible()
    assert row.get_by_role("heading", name="Untrained baseline").count() == 0
    row.locator('[data-vote="a"]').click()
    row.locator("[data-vote-kept]").wait_for()
    blind.refresh_from_db()
    assert blind.vote == ("tuned" if blind.tuned_first else "base")
    assert row.get_by_role("heading", name="Untrained baseline").is_visible()
    win_rate = page.locator("#blind-votes [data-win-rate]").get_attribute("data-win-rate")
    assert win_rate == ("100" if blind.tuned_first else "0")
