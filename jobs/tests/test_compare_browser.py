"""Comparing jobs in real headless Chromium: tick them in the list (the ticks survive its polling),
then one chart holds every job's curves, drawn by the vendored uPlot."""

from __future__ import annotations

import pytest

from conftest import make_user
from datasets_app.tests.test_browser import log_in
from jobs.models import JobStatus, MetricPoint
from jobs.tests.conftest import TINY_HYPERPARAMETERS, make_job, make_ready_dataset, scratch_base_model

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_ticked_jobs_open_side_by_side_with_their_curves_overlaid(page):
    owner = make_user("alice@example.com")
    scratch_base_model()
    dataset = make_ready_dataset(owner)
    first = make_job(owner, dataset, name="Fast", status=JobStatus.COMPLETED)
    second = make_job(
        owner,
        dataset,
        name="Slow",
        status=JobStatus.COMPLETED,
        hyperparameters={**TINY_HYPERPARAMETERS, "learning_rate": 0.0005},
    )
    make_job(owner, dataset, name="Still training", status=JobStatus.TRAINING)  # keeps the list polling
    for job, rate in ((first, 0.1), (second, 0.02)):
        MetricPoint.objects.bulk_create(
            MetricPoint(
                job=job, step=s, loss=4 - rate * s, eval_loss=(3.9 - rate * s) if s % 5 == 0 else None
            )
            for s in range(1, 31)
        )
    log_in(page, "alice@example.com")

    page.goto("/jobs/")
    page.locator(f"#compare-{first.pk}").check()
    page.locator(f"#compare-{second.pk}").check()
    page.wait_for_timeout(4500)  # two polls of the rows: the ticks are kept
    assert (
        page.locator(f"#compare-{first.pk}").is_checked()
        and page.locator(f"#compare-{second.pk}").is_checked()
    )
    page.locator("[data-action=compare]").click()

    # The list shows the newest first, and the comparison keeps the list's order.
    page.wait_for_url(f"**/jobs/compare/?job={second.pk}&job={first.pk}")
    chart = page.locator("[data-compare-chart]")
    page.locator("[data-compare-chart][data-series] canvas").wait_for()
    assert chart.get_attribute("data-series").split() == [
        f"train-{second.pk}",
        f"eval-{second.pk}",
        f"train-{first.pk}",
        f"eval-{first.pk}",
    ]
    assert chart.get_attribute("data-drawn") == str(2 * (30 + 6))
    legend = page.locator("[data-compare-chart] .u-legend").inner_text()
    assert "Fast: training loss" in legend and "Slow: evaluation loss" in legend
    assert page.locator('tr[data-differs="learning_rate"]').count() == 1
