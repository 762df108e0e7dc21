"""Blind A/B in the playground: answers as A and B in a drawn order, one vote each, the tuned model's
win rate, and the votes exported as a preference dataset the datasets page accepts."""

from __future__ import annotations

import json

import pytest

from datasets_app.models import Dataset
from datasets_app.tests.conftest import make_dataset
from jobs.models import PlaygroundRun, PlaygroundStatus
from jobs.playground import runs
from jobs.tests.conftest import completed, make_job

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


@pytest.fixture
def done_job(owner):
    return completed(make_job(owner))


def answered(
    job, *, tuned_first: bool, prompt: str = "Once upon a time", blind: bool = True
) -> PlaygroundRun:
    return PlaygroundRun.objects.create(
        job=job,
        prompt=prompt,
        max_new_tokens=16,
        temperature=0,
        top_p=1,
        status=PlaygroundStatus.DONE,
        tuned_output=f"tuned answer to {prompt}",
        base_output=f"base answer to {prompt}",
        base_label="Untrained baseline",
        tuned_tokens=5,
        tuned_seconds=0.5,
        blind=blind,
        tuned_first=tuned_first,
    )


def run_html(page: str, run: PlaygroundRun) -> str:
    start = page.index(f'id="run-{run.pk}"')
    return page[start : page.index("</article>", start)]


def test_a_blind_answer_pair_hides_which_model_wrote_which(owner_client, done_job):
    run = answered(done_job, tuned_first=False)

    page = run_html(owner_client.get(f"/jobs/{done_job.pk}/playground/").content.decode(), run)

    assert 'data-output="A">base answer' in page and 'data-output="B">tuned answer' in page
    assert "Tuned model" not in page and "Untrained baseline" not in page
    assert "tokens in" not in page  # the timings would tell the models apart
    assert 'data-vote="a"' in page and 'data-vote="tie"' in page


@pytest.mark.parametrize(
    ("tuned_first", "choice", "kept", "letter"),
    [
        (True, "a", "tuned", "A"),
        (False, "a", "base", "A"),
        (False, "b", "tuned", "B"),
        (True, "tie", "tie", ""),
    ],
)
def test_a_vote_is_kept_for_the_model_behind_the_letter_and_the_labels_appear(
    owner_client, done_job, tuned_first, choice, kept, letter
):
    run = answered(done_job, tuned_first=tuned_first)

    response = owner_client.post(
        f"/jobs/{done_job.pk}/playground/{run.pk}/vote/", {"choice": choice}, headers=HTMX
    )

    assert response.status_code == 200
    run.refresh_from_db()
    assert run.vote == kept and run.voted_at is not None
    page = response.content.decode()
    assert f'data-vote-kept="{kept}"' in page
    assert 'data-output="tuned">tuned answer' in page and 'data-output="base">base answer' in page
    if letter:
        assert f"you preferred answer {letter}" in page
    # The win rate above the runs follows, out of band.
    assert 'id="blind-votes"' in page and 'hx-swap-oob="true"' in page


def test_a_run_takes_one_vote_however_often_it_is_sent(owner_client, done_job):
    run = answered(done_job, tuned_first=True)
    owner_client.post(f"/jobs/{done_job.pk}/playground/{run.pk}/vote/", {"choice": "a"}, headers=HTMX)

    response = owner_client.post(
        f"/jobs/{done_job.pk}/playground/{run.pk}/vote/", {"choice": "b"}, headers=HTMX
    )

    run.refresh_from_db()
    assert run.vote == "tuned"
    assert "This prompt already has your vote." in response.content.decode()


@pytest.mark.parametrize(
    ("blind", "status", "choice", "message"),
    [
        (False, PlaygroundStatus.DONE, "a", "Only blind prompts take a vote"),
        (True, PlaygroundStatus.RUNNING, "a", "Vote once both answers are there."),
        (True, PlaygroundStatus.DONE, "c", "Pick A, B or a tie."),
    ],
)
def test_a_vote_that_cannot_count_is_refused_with_the_reason(
    owner_client, done_job, blind, status, choice, message
):
    run = answered(done_job, tuned_first=True, blind=blind)
    PlaygroundRun.objects.filter(pk=run.pk).update(status=status)

    response = owner_client.post(
        f"/jobs/{done_job.pk}/playground/{run.pk}/vote/", {"choice": choice}, headers=HTMX
    )

    assert message in response.content.decode()
    run.refresh_from_db()
    assert run.vote == ""


def test_another_users_run_cannot_be_voted_on_or_exported(outsider_client, done_job):
    run = answered(done_job, tuned_first=True)

    vote = outsider_client.post(f"/jobs/{done_job.pk}/playground/{run.pk}/vote/", {"choice": "a"})

    assert vote.status_code == 404
    assert outsider_client.get(f"/jobs/{done_job.pk}/playground/preferences.jsonl").status_code == 404
    run.refresh_from_db()
    assert run.vote == ""


def test_the_page_shows_the_tuned_models_win_rate(owner_client, done_job):
    for i, (tuned_first, choice) in enumerate([(True, "a"), (False, "b"), (True, "b"), (False, "tie")]):
        runs.cast_vote(answered(done_job, tuned_first=tuned_first, prompt=f"p{i}"), choice)
    answered(done_job, tuned_first=True, prompt="not voted yet")

    page = owner_client.get(f"/jobs/{done_job.pk}/playground/").content.decode()

    assert 'data-win-rate="50"' in page
    assert "The tuned model won <strong>2 of 4</strong> (50 %)" in page
    assert "won 1, and 1 was a tie" in page


def test_the_votes_export_as_prompt_chosen_rejected_lines_without_the_ties(owner_client, done_job):
    runs.cast_vote(answered(done_job, tuned_first=True, prompt="first"), "a")  # tuned chosen
    runs.cast_vote(answered(done_job, tuned_first=True, prompt="second"), "b")  # base chosen
    runs.cast_vote(answered(done_job, tuned_first=True, prompt="third"), "tie")

    response = owner_client.get(f"/jobs/{done_job.pk}/playground/preferences.jsonl")

    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="tiny-proverbs-preferences.jsonl"'
    lines = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert lines == [
        {"prompt": "first", "chosen": "tuned answer to first", "rejected": "base answer to first"},
        {"prompt": "second", "chosen": "base answer to second", "rejected": "tuned answer to second"},
    ]


def test_the_exported_votes_upload_as_a_dataset_that_trains_on_the_chosen_answers(
    owner_client, owner, done_job
):
    for i in range(3):
        runs.cast_vote(answered(done_job, tuned_first=True, prompt=f"Question {i}?"), "a")
    exported = b"".join(
        owner_client.get(f"/jobs/{done_job.pk}/playground/preferences.jsonl").streaming_content
    )

    dataset = make_dataset(owner, exported, filename="preferences.jsonl")

    assert dataset.status == Dataset.Status.READY, dataset.error
    assert dataset.stats["shape"] == "prompt_completion"
    assert dataset.stats["samples"] == 3
    assert dataset.preview[0] == {"line": 1, "text": "Question 0? → tuned answer to Question 0?"}


def test_a_blind_prompt_draws_its_order_and_says_so(
    owner_client, done_job, django_capture_on_commit_callbacks, monkeypatch
):
    from jobs import tasks

    monkeypatch.setattr(tasks.run_playground, "apply_async", lambda *a, **k: None)
    drawn = iter([False, True])
    monkeypatch.setattr(runs, "draw_tuned_first", lambda: next(drawn))
    form = {"prompt": "Hello", "max_new_tokens": 8, "temperature": 0, "top_p": 1, "blind": "on"}

    for _ in range(2):
        owner_client.post(f"/jobs/{done_job.pk}/playground/", form, headers=HTMX)

    assert list(PlaygroundRun.objects.order_by("pk").values_list("blind", "tuned_first")) == [
        (True, False),
        (True, True),
    ]
