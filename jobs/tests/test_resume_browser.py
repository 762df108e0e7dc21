"""The job page of a resumed attempt in real headless Chromium: one loss curve, marked where it resumed."""

from __future__ import annotations

import io
import json

import pytest

from conftest import make_user
from datasets_app.tests.test_browser import log_in
from jobs import actions, lifecycle
from jobs.models import JobStatus, MetricPoint, TrainingJob
from jobs.tests.conftest import make_job
from llmtuner import storage

pytestmark = [
    pytest.mark.browser,
    pytest.mark.services,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def no_worker():
    """The new attempt's task goes to the real broker, where no worker takes it: the job stays queued
    while the test plays its events (eager tasks would train it inside the request)."""
    from llmtuner.celery import app

    app.conf.task_always_eager = False
    yield
    app.conf.task_always_eager = True  # as the suite's autouse fixture sets it for every test


def test_a_resumed_attempt_shows_one_curve_with_the_resume_marked(page, no_worker):
    owner = make_user("alice@example.com")
    first = make_job(owner)
    checkpoint = f"{first.storage_prefix()}/checkpoints/checkpoint-15"
    storage.save(f"{checkpoint}/state.json", io.BytesIO(json.dumps({"step": 15}).encode()))
    TrainingJob.objects.filter(pk=first.pk).update(
        status=JobStatus.STOPPED, step=17, total_steps=30, checkpoint_step=15
    )
    for step in (5, 10, 15, 17):
        MetricPoint.objects.create(job=first, step=step, loss=3.0 - step / 10)
    first.refresh_from_db()
    log_in(page, "alice@example.com")

    page.goto(f"/jobs/{first.pk}/")
    page.locator("[data-resume-form] [data-action=resume]").click()  # on the same backend, from step 15
    page.wait_for_url("**/jobs/*/")
    new = TrainingJob.objects.get(retry_of=first)
    assert page.url.endswith(f"/jobs/{new.pk}/")
    assert page.get_by_text("it resumes from step 15").is_visible()

    lifecycle.transition(new.pk, JobStatus.PREPARING)
    lifecycle.record_event(new.pk, {"event": "start", "total_steps": 30, "resumed_from_step": 15})
    for step in (20, 25, 30):
        lifecycle.record_event(new.pk, {"event": "progress", "step": step, "total_steps": 30, "loss": 1.0})
    lifecycle.transition(new.pk, JobStatus.STOPPED, "Stopped")

    page.goto(f"/jobs/{new.pk}/")
    page.locator("[data-loss-chart][data-done=true]").wait_for()
    assert page.locator("[data-loss-chart]").get_attribute("data-points") == "6"  # 5, 10, 15 then 20, 25, 30
    marker = page.locator("[data-loss-chart] [data-resumed-at]")
    assert marker.get_attribute("data-resumed-at") == "15"
    assert page.get_by_text("resumed at 15").is_visible()
    assert page.get_by_text("This attempt resumed from the checkpoint at step 15").is_visible()
    assert actions.next_attempt(first) == new
