"""The Content-Security-Policy in real headless Chromium: the datasets and jobs pages work under it
(htmx swaps, polling, the upload script, the loss chart) and not one violation is reported.

Every `securitypolicyviolation` event of every page is sent to the test through an exposed
binding; page errors are collected too. The last step injects a <style> element on purpose, to
show the listener does hear a violation when there is one.
"""

from __future__ import annotations

import time

import pytest

from conftest import make_user
from datasets_app import actions as dataset_actions
from datasets_app.models import Dataset
from datasets_app.tests.test_browser import DROP, log_in
from jobs import lifecycle
from jobs.models import JobStatus, PlaygroundRun, TrainingJob
from jobs.tests.conftest import make_job, scratch_base_model

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LISTEN = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolation({
    page: location.pathname, directive: event.violatedDirective,
    blocked: event.blockedURI, sample: event.sample, line: event.lineNumber,
  });
});
"""
CSV = "id,text\n" + "".join(f'{i},"Proverb number {i}: a stitch in time saves nine."\n' for i in range(80))


@pytest.fixture
def no_broker(monkeypatch):
    """Tasks the pages queue are not sent anywhere: the test plays the worker's part itself."""
    from datasets_app.tasks import prepare_dataset
    from jobs import tasks

    sent = []
    for task in (prepare_dataset, tasks.run_local_job, tasks.run_playground):
        monkeypatch.setattr(task, "apply_async", lambda *a, _t=task, **k: sent.append(_t.name))
    return sent


def wait_until(page, condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        page.wait_for_timeout(200)  # lets Playwright deliver the page's events meanwhile
    raise AssertionError("timed out")


def test_the_datasets_and_jobs_pages_work_under_the_policy_with_no_violation(page, no_broker):
    violations, errors = [], []
    page.context.expose_binding("__cspViolation", lambda source, report: violations.append(report))
    page.context.add_init_script(LISTEN)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    owner = make_user("alice@example.com")
    scratch_base_model()
    log_in(page, "alice@example.com")

    # Datasets: the upload script sends the file, the page polls until preparation is done.
    page.goto("/datasets/")
    page.evaluate(DROP, ["proverbs.csv", CSV])
    page.wait_for_url("**/datasets/*/")
    dataset = Dataset.objects.get()
    assert page.locator('[data-status="uploaded"]').count() == 1
    dataset_actions.run_preparation(dataset.pk)
    page.locator('[data-status="ready"]').wait_for()  # swapped in by htmx polling
    page.goto(f"/datasets/{dataset.pk}/samples/")
    page.get_by_role("link", name="Next →").click()  # an htmx swap with a pushed URL
    page.wait_for_url("**page=2**")

    # New job: the live estimate and the preset refill are htmx swaps (out of band too).
    page.goto(f"/jobs/new/?dataset={dataset.pk}")
    page.locator("#id_base_model").select_option(
        label="Tiny GPT-2 (from scratch) · 2M parameters · 256 tokens · MIT"
    )
    page.locator("input[name=preset][value=quick]").check()
    page.locator('input[name=max_steps][value="50"]').wait_for()
    page.locator("input[name=batch_size]").fill("0")
    page.locator("[data-estimate-errors]").wait_for()
    page.locator("input[name=batch_size]").fill("4")
    page.locator("[data-estimate-errors]").wait_for(state="detached")
    page.locator("[data-launch]").click()
    page.wait_for_url("**/jobs/*/")
    job = TrainingJob.objects.get()

    # The job page: progress polled by htmx, the chart script fetching points, the log appended.
    lifecycle.transition(job.pk, JobStatus.TRAINING, "Training", total_steps=40)
    for step in range(1, 21):
        lifecycle.record_event(
            job.pk, {"event": "progress", "step": step, "total_steps": 40, "loss": 4 - step / 10}
        )
    lifecycle.append_log(job.pk, [f"step {n}" for n in range(1, 21)])
    page.locator('#job-progress[data-status="training"]').wait_for()
    wait_until(page, lambda: int(page.locator("[data-loss-chart]").get_attribute("data-points")) >= 20)
    page.locator("#log-lines", has_text="step 20").wait_for()

    # Stop, confirmed in the browser's dialog: an htmx POST with the CSRF header from <body>.
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("[data-action=stop]").click()
    page.locator('#job-progress[data-status="stopping"]').wait_for()
    lifecycle.transition(job.pk, JobStatus.STOPPED, "Stopped")
    page.locator('#job-progress[data-status="stopped"]').wait_for()
    page.locator("[data-loss-chart][data-done=true]").wait_for()

    # The list polls its rows; the playground posts a prompt with htmx and polls the run.
    running = make_job(owner, dataset, name="Still running", status=JobStatus.TRAINING)
    page.goto("/jobs/")
    page.locator(f'tr[data-job="{running.pk}"]').wait_for()
    done = make_job(owner, dataset, name="Done", status=JobStatus.COMPLETED, model_prefix="users/x/model")
    page.goto(f"/jobs/{done.pk}/playground/")
    page.locator("textarea[name=prompt]").fill("Once upon a time")
    page.get_by_role("button", name="Generate").click()
    wait_until(page, lambda: PlaygroundRun.objects.filter(job=done).exists())
    page.get_by_text("Once upon a time").first.wait_for()
    page.goto(f"/jobs/compare/?job={job.pk}&job={done.pk}")  # the vendored chart library, two jobs
    page.locator("[data-compare-chart][data-series] canvas").wait_for()
    for path in ("/dashboard/", "/settings/", f"/jobs/{job.pk}/clone/", f"/jobs/{job.pk}/delete/"):
        page.goto(path)
        page.wait_for_load_state("load")

    page.wait_for_timeout(500)
    assert violations == []
    assert errors == []
    assert set(no_broker) >= {"datasets_app.tasks.prepare_dataset", "jobs.tasks.run_local_job"}

    # The listener does hear a violation when there is one.
    page.evaluate(
        "() => { const s = document.createElement('style'); s.textContent = 'p{}'; document.head.append(s); }"
    )
    wait_until(page, lambda: violations, timeout=5)
    assert violations[0]["directive"].startswith("style-src")


def test_the_admin_works_under_the_policy_with_no_violation(page):
    violations = []
    page.context.expose_binding("__cspViolation", lambda source, report: violations.append(report))
    page.context.add_init_script(LISTEN)
    operator = make_user("operator@example.com", is_staff=True, is_superuser=True)
    job = make_job(operator)
    log_in(page, "operator@example.com")
    for path in (
        "/admin/",
        "/admin/jobs/trainingjob/",
        f"/admin/jobs/trainingjob/{job.pk}/change/",
        "/admin/datasets_app/dataset/",
        "/admin/auth/user/add/",
    ):
        page.goto(path)
        page.wait_for_load_state("load")
    page.wait_for_timeout(300)
    assert violations == []
