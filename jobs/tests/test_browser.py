"""A person uploads a CSV, trains the scratch model on it and watches it, in real headless Chromium.

A real Celery worker prepares the dataset and runs finetune.py, so this needs
PostgreSQL and Redis (the fixture skips on the embedded default).
"""

from __future__ import annotations

import time

import pytest

from conftest import make_user
from datasets_app.models import Dataset
from datasets_app.tests.test_browser import DROP, log_in
from jobs.models import JobStatus, TrainingJob
from jobs.tests.conftest import scratch_base_model

pytestmark = [
    pytest.mark.browser,
    pytest.mark.services,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

PROVERBS = [
    "The quick brown fox jumps over the lazy dog.",
    "A stitch in time saves nine.",
    "All that glitters is not gold.",
    "Actions speak louder than words.",
    "Better late than never.",
    "Every cloud has a silver lining.",
]


def proverbs_csv(rows: int = 240) -> str:
    lines = ["id,text"] + [f'{i},"{PROVERBS[i % len(PROVERBS)]} ({i})"' for i in range(rows)]
    return "\n".join(lines) + "\n"


def upload_and_wait_until_ready(page, worker) -> Dataset:
    page.goto("/datasets/")
    page.evaluate(DROP, ["proverbs.csv", proverbs_csv()])
    page.wait_for_url("**/datasets/*/")
    try:
        page.locator('[data-status="ready"]').wait_for(timeout=90_000)
    except Exception:
        dataset = Dataset.objects.first()
        state = f"{dataset.status} {dataset.error}" if dataset else "no dataset"
        raise AssertionError(f"{state}\n{worker.log_path.read_text()[-3000:]}") from None
    return Dataset.objects.get()


def fill_new_job(page, dataset: Dataset, *, max_steps: int, logging_steps: int) -> None:
    scratch_base_model()  # transactional tests flush the catalogue the migration seeded
    page.goto(f"/jobs/new/?dataset={dataset.pk}")
    page.locator("#id_base_model").select_option(
        label="Tiny GPT-2 (from scratch) · 2M parameters · 256 tokens · MIT"
    )
    page.locator("input[name=preset][value=quick]").check()
    page.locator('input[name=max_steps][value="50"]').wait_for()  # the preset filled the fields in
    page.locator("input[name=max_steps]").fill(str(max_steps))
    page.locator("input[name=max_seq_length]").fill("64")
    page.locator("input[name=batch_size]").fill("4")
    page.get_by_text("Advanced", exact=True).click()
    page.locator("input[name=logging_steps]").fill(str(logging_steps))
    page.locator("input[name=eval_steps]").fill(str(max(logging_steps * 5, 1)))
    # The estimate follows the fields.
    page.locator("[data-estimate-steps]", has_text=f"{max_steps:,}").wait_for()


def test_train_the_scratch_model_on_an_uploaded_csv_and_watch_it(celery_worker_process, page):
    make_user("alice@example.com")
    log_in(page, "alice@example.com")
    dataset = upload_and_wait_until_ready(page, celery_worker_process)

    # Long enough that the 2 s poll sees the bar at several points, even on a fast machine.
    fill_new_job(page, dataset, max_steps=400, logging_steps=5)
    page.locator("[data-estimate-errors]").wait_for(state="detached")
    page.locator("input[name=batch_size]").fill("0")
    page.get_by_text("batch_size must be an integer between 1 and 1024 (got '0')").wait_for()
    page.locator("input[name=batch_size]").fill("4")
    page.locator("[data-estimate-steps]", has_text="400").wait_for()
    page.locator("[data-launch]").click()

    page.wait_for_url("**/jobs/*/")
    job = TrainingJob.objects.get()
    assert page.url.endswith(f"/jobs/{job.pk}/")
    percents, points, timeline = set(), set(), []
    deadline = time.monotonic() + 180
    card = page.locator("#job-progress")
    while time.monotonic() < deadline:
        status = card.get_attribute("data-status")
        percents.add(int(page.locator("#job-progress [data-percent]").get_attribute("data-percent")))
        points.add(int(page.locator("[data-loss-chart]").get_attribute("data-points")))
        timeline.append((round(time.monotonic() % 1000, 1), status, max(percents), max(points)))
        if status in ("completed", "failed", "stopped"):
            break
        page.wait_for_timeout(250)

    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED, job.status_message
    assert card.get_attribute("data-status") == "completed"
    # The bar moved and the chart grew while it trained, tick by tick.
    assert len({p for p in percents if 0 < p < 100}) >= 2, [t for t in timeline if t[1] != "queued"]
    assert len({n for n in points if n > 0}) >= 2, timeline
    page.locator("[data-loss-chart][data-done=true]").wait_for()
    assert page.locator("[data-loss-chart]").get_attribute("data-series").split() == ["train", "eval"]
    assert page.locator("[data-loss-chart] canvas").count() == 1
    page.locator("#log-lines", has_text="Model saved").wait_for()
    assert page.locator("[data-action=download]").is_visible()
    assert "every 2s" not in (card.get_attribute("hx-trigger") or "")

    # The list shows it, finished, and polls nothing.
    page.goto("/jobs/")
    row = page.locator(f'tr[data-job="{job.pk}"]')
    assert row.get_attribute("data-status") == "completed"
    assert page.locator("#job-rows[hx-trigger]").count() == 0


def test_stop_a_job_while_it_trains(celery_worker_process, page):
    make_user("alice@example.com")
    log_in(page, "alice@example.com")
    dataset = upload_and_wait_until_ready(page, celery_worker_process)
    fill_new_job(page, dataset, max_steps=100_000, logging_steps=1)
    page.locator("[data-launch]").click()
    page.wait_for_url("**/jobs/*/")

    page.locator('#job-progress[data-status="training"]').wait_for(timeout=120_000)
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.locator("[data-action=stop]").click()

    page.locator('#job-progress[data-status="stopped"]').wait_for(timeout=60_000)
    job = TrainingJob.objects.get()
    assert job.status == JobStatus.STOPPED
    assert 0 < job.step < 100_000
    # The confirmation and the stopped job agree: the model so far is kept, and offered.
    assert "the model so far is saved" in asked[0]
    assert "the model so far is saved" in page.locator("[data-status-message]").inner_text()
    assert page.locator("[data-action=retry]").is_visible()
    assert page.locator("[data-action=download]").is_visible()
