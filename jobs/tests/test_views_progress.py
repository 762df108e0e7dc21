"""The polled parts of the job page: progress card, loss points and log tail.

Each reads the database only, sends only what is new, and answers 286 once
there is nothing more to come, so the browser stops asking.
"""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from jobs import lifecycle
from jobs.models import FINAL_STATES, InstanceType, JobStatus, LogLine, MetricPoint, TrainingJob

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
# An open page's polls read the job alone, whatever its size: the session comes from the cache once
# the page's first request has put it there (the progress card reads its user with the job).
POLL_QUERIES = 1


def set_state(job: TrainingJob, status: str, **fields) -> TrainingJob:
    TrainingJob.objects.filter(pk=job.pk).update(status=status, **fields)
    job.refresh_from_db()
    return job


def grow(job: TrainingJob, points: int, lines: int) -> None:
    MetricPoint.objects.bulk_create(
        MetricPoint(job=job, step=i, loss=5.0 - i / points) for i in range(points)
    )
    LogLine.objects.bulk_create(LogLine(job=job, seq=i + 1, text=f"line {i + 1}") for i in range(lines))
    TrainingJob.objects.filter(pk=job.pk).update(log_seq=lines)


# --- Progress ---


@pytest.mark.parametrize("status", [s for s in JobStatus.values if s not in FINAL_STATES])
def test_an_unfinished_job_keeps_polling(owner_client, job, status):
    set_state(job, status, status_message=f"Now {status}")

    response = owner_client.get(f"/jobs/{job.pk}/progress/", headers=HTMX)

    assert response.status_code == 200
    page = response.content.decode()
    assert page.lstrip().startswith('<section class="card" id="job-progress"')
    assert f'data-status="{status}"' in page and f"Now {status}" in page
    assert f'hx-get="/jobs/{job.pk}/progress/" hx-trigger="every 2s" hx-swap="outerHTML"' in page


@pytest.mark.parametrize("status", sorted(FINAL_STATES))
def test_a_final_job_swaps_in_a_card_without_a_trigger_and_answers_286(owner_client, job, status):
    set_state(job, status, status_message="It ended", finished_at=timezone.now())

    response = owner_client.get(f"/jobs/{job.pk}/progress/", headers=HTMX)

    assert response.status_code == 286
    page = response.content.decode()
    assert f'data-status="{status}"' in page and "It ended" in page
    assert "hx-trigger" not in page and "hx-get" not in page


def test_a_training_job_shows_step_epoch_bar_time_speed_loss_and_cost(owner_client, job):
    now = timezone.now()
    set_state(
        job,
        JobStatus.TRAINING,
        status_message="Training",
        step=5,
        total_steps=20,
        epoch=1.25,
        loss=2.3456,
        eval_loss=2.5,
        tokens_per_second=1234.5,
        eta_seconds=90,
        started_at=now - timedelta(seconds=75),
        heartbeat_at=now,
    )

    page = owner_client.get(f"/jobs/{job.pk}/progress/", headers=HTMX).content.decode()

    assert "data-step>5 of 20 (25 %)<" in page
    assert 'aria-valuenow="25"' in page and "width: 25%" in page
    assert ">1.25<" in page
    assert "data-elapsed>1 min 15 s<" in page
    assert ">1 min 30 s<" in page  # time left
    assert ">1,234<" in page or ">1,235<" in page
    assert "data-loss>2.3456<" in page and ">2.5000<" in page
    assert "data-cost>free<" in page
    assert 'data-action="stop"' in page
    assert "data-warning" not in page


def test_a_sagemaker_job_shows_its_cost_so_far(owner_client, job):
    instance = InstanceType.objects.create(
        name="ml.test.xlarge", vcpus=4, memory_gib=16, price_per_hour_usd="3.6000", price_date="2025-01-01"
    )
    set_state(
        job, JobStatus.COMPLETED, backend="sagemaker", instance_type=instance, cost_usd=Decimal("1.2345")
    )

    page = owner_client.get(f"/jobs/{job.pk}/progress/", headers=HTMX).content.decode()

    assert "data-cost>$1.23<" in page


def test_a_running_sagemaker_job_counts_its_cost_from_the_clock_between_polls(owner_client, job):
    instance = InstanceType.objects.create(
        name="ml.test.xlarge", vcpus=4, memory_gib=16, price_per_hour_usd="3.6000", price_date="2025-01-01"
    )
    set_state(
        job,
        JobStatus.TRAINING,
        backend="sagemaker",
        instance_type=instance,
        instance_count=2,
        cost_usd=Decimal("1.0000"),  # what the poller wrote a while ago
        training_started_at=timezone.now() - timedelta(minutes=30),
    )

    page = owner_client.get(f"/jobs/{job.pk}/progress/", headers=HTMX).content.decode()

    assert "data-cost>$3.60<" in page  # half an hour of two instances at $3.60/h


def test_a_silent_worker_is_shown_not_hidden(owner_client, job):
    set_state(
        job, JobStatus.TRAINING, heartbeat_at=timezone.now() - timedelta(seconds=40), step=3, total_steps=9
    )

    page = owner_client.get(f"/jobs/{job.pk}/progress/", headers=HTMX).content.decode()

    assert "No word from the worker for 40 s" in page


def test_a_job_nobody_picks_up_says_so(owner_client, job):
    TrainingJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(minutes=3))

    page = owner_client.get(f"/jobs/{job.pk}/progress/", headers=HTMX).content.decode()

    assert "No worker has picked it up for 3 min" in page


@pytest.mark.parametrize("size", [(0, 0), (2000, 500)])
@pytest.mark.parametrize("status", JobStatus.values)
@pytest.mark.parametrize("backend", ["local", "sagemaker"])
def test_the_progress_partial_makes_a_fixed_number_of_queries(
    owner_client, job, size, status, backend, django_assert_num_queries
):
    instance = InstanceType.objects.create(
        name="ml.test.xlarge", vcpus=4, memory_gib=16, price_per_hour_usd="3.6000", price_date="2025-01-01"
    )
    now = timezone.now()
    set_state(
        job,
        status,
        backend=backend,
        instance_type=instance if backend == "sagemaker" else None,
        step=5,
        total_steps=20,
        created_at=now - timedelta(minutes=5),
        started_at=now,
        training_started_at=now,
        heartbeat_at=now - timedelta(minutes=1),
        estimated_seconds=100,
    )
    grow(job, *size)
    owner_client.get(f"/jobs/{job.pk}/progress/", headers=HTMX)

    # A queued local job's place in line: the queue, and the training workers alive (jobs/queueing.py).
    place_in_line = 2 if (status, backend) == (JobStatus.QUEUED, "local") else 0
    with django_assert_num_queries(POLL_QUERIES + place_in_line):
        response = owner_client.get(f"/jobs/{job.pk}/progress/", headers=HTMX)

    assert response.status_code == (286 if status in FINAL_STATES else 200)


def test_the_progress_partial_opens_no_file(owner_client, job, monkeypatch):
    from llmtuner import storage

    def refuse(*args, **kwargs):
        raise AssertionError("the progress partial must not read storage")

    for name in ("open_stream", "exists", "list_keys", "iter_lines"):
        monkeypatch.setattr(storage, name, refuse)
    set_state(
        job, JobStatus.COMPLETED, log_key="users/1/jobs/1/logs/train.log", model_prefix="users/1/jobs/1/model"
    )

    assert owner_client.get(f"/jobs/{job.pk}/progress/", headers=HTMX).status_code == 286


# --- Signing in from the job's own row (all three polls) ---

POLLS = ["progress", "logs", "metrics"]


@pytest.mark.parametrize("poll", POLLS)
def test_a_poll_signs_its_user_in_from_the_jobs_query_not_from_the_cache(owner_client, owner, job, poll):
    from django.core.cache import cache

    from accounts.backends import user_cache_key

    owner_client.get(f"/jobs/{job.pk}/{poll}/", headers=HTMX)
    cache.delete(user_cache_key(owner.pk))

    response = owner_client.get(f"/jobs/{job.pk}/{poll}/", headers=HTMX)

    assert response.status_code == 200
    assert cache.get(user_cache_key(owner.pk)) is None  # neither read nor filled


def test_the_progress_card_is_the_owners(owner_client, job):
    response = owner_client.get(f"/jobs/{job.pk}/progress/", headers=HTMX)

    assert f'id="job-progress" data-status="{job.status}"' in response.text


@pytest.mark.parametrize("poll", POLLS)
def test_an_owner_deactivated_behind_the_cache_is_signed_out_at_the_next_poll(owner_client, owner, job, poll):
    from django.contrib.auth import get_user_model

    owner_client.get(f"/jobs/{job.pk}/{poll}/", headers=HTMX)
    owner_client.get("/jobs/")  # the cache holds the active user now
    get_user_model().objects.filter(pk=owner.pk).update(is_active=False)  # no save(): the cache keeps it

    response = owner_client.get(f"/jobs/{job.pk}/{poll}/", headers=HTMX)

    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("poll", POLLS)
def test_a_password_changed_elsewhere_ends_the_session_at_the_next_poll(owner_client, owner, job, poll):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    owner_client.get("/jobs/")  # the cache holds the user with the old password
    get_user_model().objects.filter(pk=owner.pk).update(password=make_password("a new one"))

    response = owner_client.get(f"/jobs/{job.pk}/{poll}/", headers=HTMX)

    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert owner_client.get("/jobs/").status_code == 302  # the session is gone, as Django ends it


@pytest.mark.parametrize("poll", POLLS)
def test_a_session_that_names_someone_else_still_gets_404(outsider_client, job, poll):
    response = outsider_client.get(f"/jobs/{job.pk}/{poll}/", headers=HTMX)

    assert response.status_code == 404


# --- Loss chart ---


def test_the_chart_gets_only_the_points_after_its_cursor(owner_client, job, other_job):
    set_state(job, JobStatus.TRAINING, total_steps=30)
    first = MetricPoint.objects.create(job=job, step=1, loss=3.0)
    MetricPoint.objects.create(job=other_job, step=1, loss=9.0)
    second = MetricPoint.objects.create(job=job, step=2, eval_loss=2.9)

    response = owner_client.get(f"/jobs/{job.pk}/metrics/?after=0")

    assert response.status_code == 200
    body = json.loads(response.content)
    assert body == {
        "points": [[first.pk, 1, 3.0, None], [second.pk, 2, None, 2.9]],
        "after": second.pk,
        "final": False,
        "total_steps": 30,
    }

    third = MetricPoint.objects.create(job=job, step=3, loss=2.5)
    body = json.loads(owner_client.get(f"/jobs/{job.pk}/metrics/?after={second.pk}").content)
    assert body["points"] == [[third.pk, 3, 2.5, None]]

    body = json.loads(owner_client.get(f"/jobs/{job.pk}/metrics/?after={third.pk}").content)
    assert body["points"] == [] and body["after"] == third.pk


def test_the_chart_stops_with_286_once_the_last_points_are_sent(owner_client, job):
    point = MetricPoint.objects.create(job=job, step=1, loss=3.0)
    set_state(job, JobStatus.COMPLETED)

    response = owner_client.get(f"/jobs/{job.pk}/metrics/?after=0")

    assert response.status_code == 286
    body = json.loads(response.content)
    assert body["points"] == [[point.pk, 1, 3.0, None]] and body["final"] is True


def test_a_bad_chart_cursor_starts_from_the_beginning(owner_client, job):
    MetricPoint.objects.create(job=job, step=1, loss=3.0)

    body = json.loads(owner_client.get(f"/jobs/{job.pk}/metrics/?after=oops").content)

    assert len(body["points"]) == 1


def test_the_chart_endpoint_makes_a_fixed_number_of_queries(owner_client, job, django_assert_num_queries):
    grow(job, 3000, 0)
    owner_client.get(f"/jobs/{job.pk}/metrics/?after=0")

    with django_assert_num_queries(POLL_QUERIES + 1):
        owner_client.get(f"/jobs/{job.pk}/metrics/?after=0")


# --- Log tail ---


def test_the_log_sends_only_new_lines_and_moves_its_cursor(owner_client, job):
    set_state(job, JobStatus.TRAINING)
    lifecycle.append_log(job.pk, ["one", "two"])

    first = owner_client.get(f"/jobs/{job.pk}/logs/?after=0", headers=HTMX)

    assert first.status_code == 200
    page = first.content.decode()
    assert '<div id="log-poller" data-after="2"' in page
    assert f'hx-get="/jobs/{job.pk}/logs/?after=2" hx-trigger="every 2s"' in page
    assert (
        '<div hx-swap-oob="beforeend:#log-lines"><div data-seq="1">one</div><div data-seq="2">two</div></div>'
        in page
    )

    lifecycle.append_log(job.pk, ["three"])
    page = owner_client.get(f"/jobs/{job.pk}/logs/?after=2", headers=HTMX).content.decode()
    assert "one" not in page and "two" not in page
    assert '<div data-seq="3">three</div>' in page

    page = owner_client.get(f"/jobs/{job.pk}/logs/?after=3", headers=HTMX).content.decode()
    assert "hx-swap-oob" not in page and "?after=3" in page


def test_the_log_stops_with_286_once_the_job_ended_and_all_lines_are_sent(owner_client, job):
    lifecycle.append_log(job.pk, ["last words"])
    set_state(job, JobStatus.FAILED)

    response = owner_client.get(f"/jobs/{job.pk}/logs/?after=0", headers=HTMX)

    assert response.status_code == 286
    page = response.content.decode()
    assert "last words" in page
    assert "hx-trigger" not in page


def test_a_log_escapes_what_the_script_printed(owner_client, job):
    lifecycle.append_log(job.pk, ["<script>alert(1)</script>"])

    page = owner_client.get(f"/jobs/{job.pk}/logs/?after=0", headers=HTMX).content.decode()

    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_lines_trimmed_away_since_the_cursor_are_marked(owner_client, job):
    LogLine.objects.create(job=job, seq=900, text="recent")

    page = owner_client.get(f"/jobs/{job.pk}/logs/?after=10", headers=HTMX).content.decode()

    assert "some lines were skipped" in page and "recent" in page


def test_a_long_job_page_shows_only_the_end_of_the_log(owner_client, job):
    grow(job, 0, 500)

    page = owner_client.get(f"/jobs/{job.pk}/").content.decode()

    assert '<div data-seq="500">line 500</div>' in page
    assert '<div data-seq="300">' not in page
    assert "earlier lines are in the full log" in page
    assert f"/jobs/{job.pk}/logs/?after=500" in page


def test_the_log_endpoint_makes_a_fixed_number_of_queries(owner_client, job, django_assert_num_queries):
    grow(job, 0, 2000)
    owner_client.get(f"/jobs/{job.pk}/logs/?after=0", headers=HTMX)

    with django_assert_num_queries(POLL_QUERIES + 1):
        owner_client.get(f"/jobs/{job.pk}/logs/?after=0", headers=HTMX)
