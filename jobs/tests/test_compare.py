"""The compare page: 2 to 4 of a user's own jobs, their loss curves, figures and differing settings."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs import compare
from jobs.models import JobStatus, MetricPoint, TrainingJob
from jobs.tests.conftest import TINY_HYPERPARAMETERS, make_job

pytestmark = pytest.mark.django_db


def with_points(job: TrainingJob, count: int, eval_every: int = 10) -> TrainingJob:
    MetricPoint.objects.bulk_create(
        MetricPoint(
            job=job,
            step=step,
            loss=5.0 - step / (count + 1),
            eval_loss=(4.0 - step / (count + 1)) if step % eval_every == 0 else None,
        )
        for step in range(1, count + 1)
    )
    return job


def series_of(response) -> list[dict]:
    page = response.content.decode()
    start = page.index('<script id="compare-series" type="application/json">') + len(
        '<script id="compare-series" type="application/json">'
    )
    return json.loads(page[start : page.index("</script>", start)])


@pytest.fixture
def two_jobs(job_factory):
    first = job_factory(name="lr 3e-3", status=JobStatus.COMPLETED)
    second = job_factory(
        name="lr 1e-3",
        status=JobStatus.COMPLETED,
        hyperparameters={**TINY_HYPERPARAMETERS, "learning_rate": 0.001},
    )
    return with_points(first, 30), with_points(second, 20)


def test_two_jobs_show_both_curves_their_figures_and_the_setting_that_differs(owner_client, two_jobs):
    first, second = two_jobs

    response = owner_client.get("/jobs/compare/", {"job": [first.pk, second.pk]})

    assert response.status_code == 200
    series = series_of(response)
    assert [(s["job"], s["kind"], len(s["points"])) for s in series] == [
        (first.pk, "train", 30),
        (first.pk, "eval", 3),
        (second.pk, "train", 20),
        (second.pk, "eval", 2),
    ]
    assert series[0]["points"][0] == [1, pytest.approx(5.0 - 1 / 31)]
    page = response.content.decode()
    assert "lr 3e-3" in page and "lr 1e-3" in page
    # Only learning_rate differs: it is the one highlighted row, and the rest are listed as the same.
    assert page.count("data-differs=") == 1
    assert 'data-differs="learning_rate"' in page
    assert 'data-same="batch_size"' in page
    assert "1 of " in page and " settings differ: highlighted below." in page


def test_the_chart_draws_from_the_vendored_library_and_no_cdn(owner_client, two_jobs):
    response = owner_client.get("/jobs/compare/", {"job": [job.pk for job in two_jobs]})

    page = response.content.decode()
    assert "/static/vendor/uplot/uPlot.iife.min.js" in page
    assert "/static/jobs/charts.js" in page and "/static/jobs/compare.js" in page
    assert '<script src="http' not in page and '<link rel="stylesheet" href="http' not in page


def test_the_page_makes_the_same_queries_for_20_points_and_for_5000(owner_client, job_factory):
    def queries_for(points: int) -> int:
        jobs = [with_points(job_factory(name=f"job {i}"), points) for i in range(3)]
        owner_client.get("/jobs/compare/", {"job": [job.pk for job in jobs]})  # warm the session
        with CaptureQueriesContext(connection) as queries:
            response = owner_client.get("/jobs/compare/", {"job": [job.pk for job in jobs]})
        assert response.status_code == 200
        return len(queries)

    assert queries_for(20) == queries_for(5000)


def test_a_long_curve_is_thinned_keeping_its_first_and_last_points(owner_client, job_factory):
    long = with_points(job_factory(name="long"), 5000, eval_every=10_000)
    short = with_points(job_factory(name="short"), 10)

    series = series_of(owner_client.get("/jobs/compare/", {"job": [long.pk, short.pk]}))

    points = series[0]["points"]
    assert len(points) == compare.MAX_POINTS_PER_SERIES
    assert points[0][0] == 1 and points[-1][0] == 5000
    assert [p[0] for p in points] == sorted({p[0] for p in points})


@pytest.mark.parametrize("count", [0, 1, 5])
def test_fewer_than_two_or_more_than_four_jobs_are_refused_with_the_reason(owner_client, job_factory, count):
    jobs = [job_factory(name=f"job {i}") for i in range(count)]

    response = owner_client.get("/jobs/compare/", {"job": [job.pk for job in jobs]})

    assert response.status_code == 400
    assert f"Choose 2 to 4 different jobs to compare ({count} chosen)." in response.content.decode()


def test_the_same_job_twice_counts_once(owner_client, job):
    response = owner_client.get("/jobs/compare/", {"job": [job.pk, job.pk]})

    assert response.status_code == 400
    assert "(1 chosen)" in response.content.decode()


@pytest.mark.parametrize("bad", ["abc", "-1", "1" * 40])
def test_an_id_that_is_not_a_whole_number_is_refused_not_a_500(owner_client, job, bad):
    response = owner_client.get("/jobs/compare/", {"job": [job.pk, bad]})

    assert response.status_code == 400


def test_another_users_job_is_a_404(owner_client, job, outsider):
    theirs = make_job(outsider, name="Not yours")

    response = owner_client.get("/jobs/compare/", {"job": [job.pk, theirs.pk]})

    assert response.status_code == 404
    assert "Not yours" not in response.content.decode()


def test_signed_out_visitors_are_sent_to_sign_in(client, two_jobs):
    response = client.get("/jobs/compare/", {"job": [job.pk for job in two_jobs]})

    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_evaluation_of_each_job_is_side_by_side(owner_client, two_jobs):
    first, second = two_jobs
    TrainingJob.objects.filter(pk=first.pk).update(
        metrics={"evaluation": {"tuned": {"exact_match": 0.8, "f1": 0.9}, "base": {"exact_match": 0.1}}}
    )
    TrainingJob.objects.filter(pk=second.pk).update(metrics={"evaluation": {"tuned": {"exact_match": 0.5}}})

    page = owner_client.get("/jobs/compare/", {"job": [first.pk, second.pk]}).content.decode()

    table = page[page.index("data-compare-evaluation") :]
    table = table[: table.index("</table>")]
    assert "exact_match" in table and "0.8" in table and "0.5" in table
    assert "f1" in table and "0.9" in table and "–" in table  # the second job has no F1


def test_the_jobs_list_offers_the_comparison(owner_client, two_jobs):
    page = owner_client.get("/jobs/").content.decode()

    assert 'id="compare-form"' in page and 'action="/jobs/compare/"' in page
    for job in two_jobs:
        assert f'name="job" value="{job.pk}" form="compare-form" id="compare-{job.pk}" hx-preserve' in page
