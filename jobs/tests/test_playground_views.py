"""The playground pages: who may use them, what the form accepts, how a run is shown and polled,
and the limits that keep one person's prompts from holding up everyone else's work."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import JobStatus, PlaygroundRun, PlaygroundStatus, TrainingJob
from jobs.playground.views import PlaygroundForm
from jobs.tests.conftest import make_job

pytestmark = pytest.mark.django_db

GOOD = {"prompt": "The quick brown", "max_new_tokens": "32", "temperature": "0.7", "top_p": "0.9"}
HTMX = {"HTTP_HX_REQUEST": "true"}


def complete(job: TrainingJob) -> TrainingJob:
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.COMPLETED, model_prefix=f"{job.storage_prefix()}/model", finished_at=timezone.now()
    )
    job.refresh_from_db()
    return job


@pytest.fixture
def completed_job(owner):
    return complete(make_job(owner))


@pytest.fixture
def finished_run(completed_job):
    return PlaygroundRun.objects.create(
        job=completed_job,
        prompt="<script>alert(1)</script> The quick",
        max_new_tokens=16,
        temperature=0,
        top_p=1,
        status=PlaygroundStatus.DONE,
        tuned_output="brown fox <b>jumps</b>",
        base_output="zq <i>noise</i>",
        base_label="Untrained baseline (same architecture, random weights, seed 0)",
        tuned_seconds=0.5,
        tuned_tokens=5,
        base_seconds=0.4,
        base_tokens=4,
    )


def urls(job_pk: int, run_pk: int) -> list[tuple[str, str]]:
    return [
        ("get", f"/jobs/{job_pk}/playground/"),
        ("post", f"/jobs/{job_pk}/playground/"),
        ("get", f"/jobs/{job_pk}/playground/{run_pk}/"),
    ]


# --- The form -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prompt", "", "Write a prompt first."),
        ("prompt", "   \n ", "Write a prompt first."),
        ("prompt", "x" * 4001, "The prompt can be at most 4,000 characters; this one has 4,001."),
        ("max_new_tokens", "0", "Max new tokens must be between 1 and 512."),
        ("max_new_tokens", "513", "Max new tokens must be between 1 and 512."),
        ("max_new_tokens", "2.5", "Max new tokens must be a whole number."),
        ("max_new_tokens", "", "Max new tokens is required."),
        ("temperature", "-0.1", "Temperature must be between 0 and 2 (0 means greedy)."),
        ("temperature", "2.01", "Temperature must be between 0 and 2 (0 means greedy)."),
        ("temperature", "hot", "Temperature must be a number."),
        ("temperature", "nan", "Temperature must be a number."),
        ("top_p", "0", "Top-p must be above 0 and at most 1."),
        ("top_p", "1.5", "Top-p must be above 0 and at most 1."),
        ("top_p", "", "Top-p is required."),
    ],
)
def test_the_form_refuses_bad_settings_naming_the_field(field, value, message):
    form = PlaygroundForm({**GOOD, field: value})

    assert not form.is_valid()
    assert form.errors[field] == [message]


def test_the_form_accepts_the_edges_and_keeps_the_prompt_as_written():
    form = PlaygroundForm(
        {"prompt": "Once upon a ", "max_new_tokens": "512", "temperature": "0", "top_p": "1"}
    )

    assert form.is_valid(), form.errors
    assert form.cleaned_data == {
        "prompt": "Once upon a ",
        "max_new_tokens": 512,
        "temperature": 0.0,
        "top_p": 1.0,
        "blind": False,
    }
    assert PlaygroundForm({**GOOD, "max_new_tokens": "1", "temperature": "2", "top_p": "0.01"}).is_valid()


# --- Who may use it -----------------------------------------------------------------


def test_anonymous_is_sent_to_log_in(client, finished_run):
    for method, url in urls(finished_run.job_id, finished_run.pk):
        response = getattr(client, method)(url, GOOD if method == "post" else None)

        assert response.status_code == 302, url
        assert response.url.startswith("/accounts/login/"), url
    assert PlaygroundRun.objects.count() == 1


def test_every_playground_url_is_404_for_an_outsider(outsider_client, finished_run):
    for method, url in urls(finished_run.job_id, finished_run.pk):
        response = getattr(outsider_client, method)(url, GOOD if method == "post" else None, **HTMX)

        assert response.status_code == 404, url
    assert PlaygroundRun.objects.count() == 1


def test_a_run_is_404_under_another_job_even_of_the_same_owner(owner_client, owner, finished_run):
    other = complete(make_job(owner, name="Other"))

    response = owner_client.get(f"/jobs/{other.pk}/playground/{finished_run.pk}/")

    assert response.status_code == 404


def test_the_owner_sees_the_page_with_the_form(owner_client, completed_job):
    response = owner_client.get(f"/jobs/{completed_job.pk}/playground/")

    assert response.status_code == 200
    page = response.content.decode()
    assert 'name="prompt"' in page
    assert "untrained baseline" in page
    assert "No prompts yet" in page


@pytest.mark.parametrize(
    "status", [JobStatus.QUEUED, JobStatus.TRAINING, JobStatus.FAILED, JobStatus.STOPPED]
)
def test_a_job_that_did_not_complete_has_no_playground(owner_client, owner, status):
    job = make_job(owner)
    TrainingJob.objects.filter(pk=job.pk).update(status=status)

    page = owner_client.get(f"/jobs/{job.pk}/playground/")
    post = owner_client.post(f"/jobs/{job.pk}/playground/", GOOD)

    assert page.status_code == 200
    assert "the playground opens once it has completed" in page.content.decode()
    assert f'href="/jobs/{job.pk}/"' in page.content.decode()
    assert 'name="prompt"' not in page.content.decode()
    assert post.status_code == 400
    assert "the playground opens once it has completed" in post.content.decode()
    assert not PlaygroundRun.objects.exists()


# --- Asking ---------------------------------------------------------------------------


def test_a_prompt_is_saved_queued_and_its_task_sent_after_commit(
    owner_client, completed_job, django_capture_on_commit_callbacks, monkeypatch
):
    from jobs import tasks

    sent = []
    monkeypatch.setattr(
        tasks.run_playground, "apply_async", lambda args, task_id: sent.append((args, task_id))
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/jobs/{completed_job.pk}/playground/", GOOD)

    assert response.status_code == 302
    assert response.url == f"/jobs/{completed_job.pk}/playground/"
    run = PlaygroundRun.objects.get()
    assert run.job == completed_job
    assert (run.prompt, run.max_new_tokens, run.temperature, run.top_p) == ("The quick brown", 32, 0.7, 0.9)
    assert run.status == PlaygroundStatus.QUEUED
    assert run.base_label.startswith("Untrained baseline")
    assert sent == [((run.pk,), run.celery_task_id)]


def test_an_htmx_prompt_answers_with_the_pending_row_that_polls(
    owner_client, completed_job, django_capture_on_commit_callbacks
):
    response = owner_client.post(f"/jobs/{completed_job.pk}/playground/", GOOD, **HTMX)

    assert response.status_code == 200
    run = PlaygroundRun.objects.get()
    fragment = response.content.decode()
    assert fragment.lstrip().startswith('<div id="playground">')
    assert f'hx-get="/jobs/{completed_job.pk}/playground/{run.pk}/"' in fragment
    assert 'hx-trigger="every 2s"' in fragment
    assert "Waiting for a worker" in fragment
    assert "The quick brown</textarea>" in fragment  # the box keeps the prompt for the next try


def test_bad_settings_come_back_with_the_message_and_nothing_saved(owner_client, completed_job):
    page = owner_client.post(f"/jobs/{completed_job.pk}/playground/", {**GOOD, "top_p": "0"})
    fragment = owner_client.post(
        f"/jobs/{completed_job.pk}/playground/", {**GOOD, "temperature": "9"}, **HTMX
    )

    assert page.status_code == 400
    assert "Top-p must be above 0 and at most 1." in page.content.decode()
    assert fragment.status_code == 200
    assert "Temperature must be between 0 and 2 (0 means greedy)." in fragment.content.decode()
    assert not PlaygroundRun.objects.exists()


# --- Showing runs ---------------------------------------------------------------------


def test_earlier_runs_are_listed_newest_first_with_both_answers_escaped(owner_client, finished_run):
    newer = PlaygroundRun.objects.create(
        job=finished_run.job, prompt="A stitch in", max_new_tokens=8, temperature=0.5, top_p=0.9
    )

    page = owner_client.get(f"/jobs/{finished_run.job_id}/playground/").content.decode()

    assert page.index(f'id="run-{newer.pk}"') < page.index(f'id="run-{finished_run.pk}"')
    assert "&lt;script&gt;alert(1)&lt;/script&gt; The quick" in page
    assert "brown fox &lt;b&gt;jumps&lt;/b&gt;" in page
    assert "zq &lt;i&gt;noise&lt;/i&gt;" in page
    assert "<script>alert(1)</script>" not in page
    assert "Untrained baseline (same architecture, random weights, seed 0)" in page


def test_the_run_partial_polls_while_pending_and_answers_286_when_done(owner_client, completed_job):
    run = PlaygroundRun.objects.create(
        job=completed_job, prompt="All that", max_new_tokens=8, temperature=0, top_p=1
    )
    url = f"/jobs/{completed_job.pk}/playground/{run.pk}/"

    pending = owner_client.get(url, **HTMX)
    PlaygroundRun.objects.filter(pk=run.pk).update(
        status=PlaygroundStatus.DONE, tuned_output="glitters is not gold", base_output="qqq"
    )
    done = owner_client.get(url, **HTMX)

    assert pending.status_code == 200
    assert 'hx-trigger="every 2s"' in pending.content.decode()
    assert done.status_code == 286
    assert "hx-trigger" not in done.content.decode()
    assert "glitters is not gold" in done.content.decode()
    assert owner_client.get(url).status_code == 200  # a plain GET is a normal page fragment


def test_a_failed_run_shows_its_reason_and_stops_polling(owner_client, completed_job):
    run = PlaygroundRun.objects.create(
        job=completed_job,
        prompt="Hi",
        max_new_tokens=8,
        temperature=0,
        top_p=1,
        status=PlaygroundStatus.FAILED,
        error="Could not load the base model 'gpt2': no network.",
    )

    response = owner_client.get(f"/jobs/{completed_job.pk}/playground/{run.pk}/", **HTMX)

    assert response.status_code == 286
    assert "Could not load the base model &#x27;gpt2&#x27;: no network." in response.content.decode()


def test_the_run_partial_makes_a_fixed_number_of_queries(
    owner_client, finished_run, django_assert_num_queries
):
    url = f"/jobs/{finished_run.job_id}/playground/{finished_run.pk}/"
    owner_client.get(url, **HTMX)  # from here on the session and the user come from the cache
    # the run with its job
    with django_assert_num_queries(1):
        owner_client.get(url, **HTMX)


# --- Limits ----------------------------------------------------------------------


@pytest.fixture
def sent(monkeypatch):
    """The run ids sent to the broker."""
    from jobs import tasks

    ids: list[int] = []
    monkeypatch.setattr(tasks.run_playground, "apply_async", lambda args, task_id: ids.append(args[0]))
    return ids


def earlier_run(job: TrainingJob, seconds_ago: float, status: str = PlaygroundStatus.DONE) -> PlaygroundRun:
    run = PlaygroundRun.objects.create(
        job=job, prompt="Hi", max_new_tokens=8, temperature=0, top_p=1, status=status
    )
    PlaygroundRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(seconds=seconds_ago))
    return run


# --- Limits: prompt length -----------------------------------------------------------


def test_a_prompt_over_the_length_limit_is_refused_with_both_figures(settings):
    settings.PLAYGROUND_MAX_PROMPT_CHARS = 1000

    form = PlaygroundForm({**GOOD, "prompt": "x" * 1001})

    assert not form.is_valid()
    assert form.errors["prompt"] == ["The prompt can be at most 1,000 characters; this one has 1,001."]
    assert PlaygroundForm({**GOOD, "prompt": "x" * 1000}).is_valid()


def test_the_length_limit_counts_a_line_break_once_as_the_browser_does(settings):
    # Browsers send a textarea's line breaks as CRLF but count each as one character.
    settings.PLAYGROUND_MAX_PROMPT_CHARS = 4000

    form = PlaygroundForm({**GOOD, "prompt": "a\r\n" * 2000})

    assert form.is_valid(), form.errors
    assert form.cleaned_data["prompt"] == "a\n" * 2000


def test_the_prompt_box_tells_the_browser_the_limit(owner_client, completed_job, settings):
    settings.PLAYGROUND_MAX_PROMPT_CHARS = 1234

    page = owner_client.get(f"/jobs/{completed_job.pk}/playground/").content.decode()

    assert 'maxlength="1234"' in page


def test_a_long_prompt_comes_back_refused_and_nothing_is_queued(
    owner_client, completed_job, settings, sent, django_capture_on_commit_callbacks
):
    settings.PLAYGROUND_MAX_PROMPT_CHARS = 50
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(
            f"/jobs/{completed_job.pk}/playground/", {**GOOD, "prompt": "y" * 51}, **HTMX
        )

    assert response.status_code == 200
    assert "The prompt can be at most 50 characters; this one has 51." in response.content.decode()
    assert not PlaygroundRun.objects.exists()
    assert sent == []


# --- Prompts in flight ------------------------------------------------------------------


def test_a_user_with_the_most_prompts_in_flight_is_refused_another_until_one_finishes(
    owner_client, completed_job, settings, sent, django_capture_on_commit_callbacks
):
    settings.PLAYGROUND_RUNS_IN_FLIGHT = 2
    running = earlier_run(completed_job, 90, PlaygroundStatus.RUNNING)
    earlier_run(completed_job, 80, PlaygroundStatus.QUEUED)
    earlier_run(completed_job, 70, PlaygroundStatus.DONE)
    earlier_run(completed_job, 60, PlaygroundStatus.FAILED)
    url = f"/jobs/{completed_job.pk}/playground/"

    with django_capture_on_commit_callbacks(execute=True):
        refused = owner_client.post(url, GOOD)
    PlaygroundRun.objects.filter(pk=running.pk).update(status=PlaygroundStatus.DONE)
    with django_capture_on_commit_callbacks(execute=True):
        accepted = owner_client.post(url, GOOD)

    assert refused.status_code == 429
    assert (
        "You have 2 prompts waiting or generating, the most at once: "
        "send this one when one of them has finished."
    ) in refused.content.decode()
    assert accepted.status_code == 302
    assert PlaygroundRun.objects.count() == 5
    assert sent == [PlaygroundRun.objects.latest("pk").pk]


def test_prompts_in_flight_count_across_all_of_a_users_jobs(
    owner_client, owner, completed_job, settings, sent, django_capture_on_commit_callbacks
):
    settings.PLAYGROUND_RUNS_IN_FLIGHT = 1
    other_job = complete(make_job(owner, name="Other"))
    earlier_run(other_job, 5, PlaygroundStatus.QUEUED)

    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/jobs/{completed_job.pk}/playground/", GOOD, **HTMX)

    assert response.status_code == 200  # htmx swaps only 2xx responses
    assert "You have 1 prompt waiting or generating, the most at once" in response.content.decode()
    assert not completed_job.playground_runs.exists()
    assert sent == []


def test_another_users_prompts_in_flight_do_not_hold_up_mine(
    owner_client, completed_job, outsider, settings, sent, django_capture_on_commit_callbacks
):
    settings.PLAYGROUND_RUNS_IN_FLIGHT = 1
    for seconds_ago in (30, 20, 10):
        earlier_run(complete(make_job(outsider)), seconds_ago, PlaygroundStatus.QUEUED)

    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/jobs/{completed_job.pk}/playground/", GOOD)

    assert response.status_code == 302
    assert sent == [completed_job.playground_runs.get().pk]


# --- Prompts a minute -------------------------------------------------------------------


def test_a_user_over_the_prompts_a_minute_is_told_when_to_try_again(
    owner_client, completed_job, settings, sent, django_capture_on_commit_callbacks
):
    settings.PLAYGROUND_PROMPTS_PER_MINUTE = 3
    for seconds_ago in (75, 20, 10, 5):  # the first is over a minute old: it no longer counts
        earlier_run(completed_job, seconds_ago)

    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/jobs/{completed_job.pk}/playground/", GOOD)

    assert response.status_code == 429
    assert response["Retry-After"] == "40"
    assert (
        "You have sent 3 prompts in the last minute, the most allowed: try again in 40 s."
        in response.content.decode()
    )
    assert PlaygroundRun.objects.count() == 4
    assert sent == []


def test_prompts_a_minute_are_counted_across_jobs_and_free_again_after_a_minute(
    owner_client, owner, completed_job, settings, sent, django_capture_on_commit_callbacks
):
    settings.PLAYGROUND_PROMPTS_PER_MINUTE = 2
    other_job = complete(make_job(owner, name="Other"))
    earlier_run(other_job, 61)
    earlier_run(other_job, 30, PlaygroundStatus.FAILED)

    with django_capture_on_commit_callbacks(execute=True):
        first = owner_client.post(f"/jobs/{completed_job.pk}/playground/", GOOD)
        second = owner_client.post(f"/jobs/{completed_job.pk}/playground/", GOOD)

    assert first.status_code == 302
    assert second.status_code == 429
    assert "try again in 30 s" in second.content.decode()
    assert len(sent) == 1


@pytest.mark.django_db(transaction=True)
def test_two_prompts_sent_at_the_same_moment_are_counted_one_after_the_other(owner, settings):
    from django.db import connection, transaction

    from jobs.playground import runs

    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no row locks: the race this guards against needs PostgreSQL")
    settings.PLAYGROUND_RUNS_IN_FLIGHT = 1
    job = complete(make_job(owner))
    settings_of_a_prompt = {"prompt": "Hi", "max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0}
    first_sent = threading.Event()
    outcomes: list[str] = []

    def second_prompt() -> None:
        first_sent.wait()
        try:
            runs.submit_prompt(job, **settings_of_a_prompt)
        except runs.TooManyPrompts:
            outcomes.append("refused")
        else:
            outcomes.append("accepted")
        finally:
            connection.close()

    other = threading.Thread(target=second_prompt)
    other.start()
    with transaction.atomic():  # the first prompt's transaction is still open when the second comes
        runs.submit_prompt(job, **settings_of_a_prompt)
        first_sent.set()
        other.join(timeout=1)
    other.join()

    assert outcomes == ["refused"]
    assert job.playground_runs.count() == 1
