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
    assert "this job's model won\n    <strong>2 of 4</strong> (50 %)" in page
    assert "the baseline won 1, and 1 was a tie" in page


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


# --- Two jobs of one dataset, compared -----------------------------------------------------------


def test_the_form_offers_only_the_owners_completed_jobs_of_the_same_dataset(
    owner_client, owner, outsider, done_job
):
    same = completed(make_job(owner, done_job.dataset, name="Same data, other settings"))
    make_job(owner, done_job.dataset, name="Still training")
    completed(make_job(owner, name="Other data"))
    completed(make_job(outsider, name="Not yours"))

    page = owner_client.get(f"/jobs/{done_job.pk}/playground/").content.decode()

    assert f'<option value="{same.pk}">Same data, other settings (job {same.pk}' in page
    for name in ("Still training", "Other data", "Not yours"):
        assert name not in page


def test_a_prompt_against_another_job_names_it_and_a_job_outside_the_choice_is_refused(
    owner_client, owner, outsider, done_job, monkeypatch
):
    from jobs import tasks

    monkeypatch.setattr(tasks.run_playground, "apply_async", lambda *a, **k: None)
    same = completed(make_job(owner, done_job.dataset, name="Rival"))
    theirs = completed(make_job(outsider, name="Not yours"))
    form = {"prompt": "Hello", "max_new_tokens": 8, "temperature": 0, "top_p": 1, "blind": "on"}

    owner_client.post(f"/jobs/{done_job.pk}/playground/", {**form, "against": same.pk}, headers=HTMX)
    refused = owner_client.post(
        f"/jobs/{done_job.pk}/playground/", {**form, "against": theirs.pk}, headers=HTMX
    )

    run = PlaygroundRun.objects.get()
    assert (run.rival_job_id, run.rival_name, run.base_label) == (same.pk, "Rival", f"Rival (job {same.pk})")
    assert "Select a valid choice" in refused.content.decode()


def test_each_job_counts_its_wins_on_either_side_of_a_pair(owner, done_job):
    rival = completed(make_job(owner, done_job.dataset, name="Rival"))

    def pair(job, other, choice, tuned_first=True):
        run = answered(job, tuned_first=tuned_first)
        PlaygroundRun.objects.filter(pk=run.pk).update(rival_job=other, rival_name=other.name)
        run.refresh_from_db()
        runs.cast_vote(run, choice)

    pair(done_job, rival, "a")  # done_job wins
    pair(done_job, rival, "b")  # rival wins
    pair(rival, done_job, "b")  # asked from the rival's page: done_job (the B side) wins
    pair(rival, done_job, "tie")
    runs.cast_vote(answered(done_job, tuned_first=True), "a")  # against the base: not a job vote

    first, second = runs.vote_tally(done_job), runs.vote_tally(rival)

    assert first["vs_jobs"] == {"wins": 2, "losses": 1, "ties": 1, "total": 4, "win_rate": 50}
    assert second["vs_jobs"] == {"wins": 1, "losses": 2, "ties": 1, "total": 4, "win_rate": 25}
    assert first["vs_base"]["total"] == 1 and second["vs_base"]["total"] == 0


def test_a_prompt_whose_rival_job_was_deleted_fails_saying_so(owner, done_job):
    rival = completed(make_job(owner, done_job.dataset, name="Gone soon"))
    run = PlaygroundRun.objects.create(
        job=done_job,
        prompt="Hi",
        max_new_tokens=4,
        temperature=0,
        top_p=1,
        rival_job=rival,
        rival_name=rival.name,
    )
    rival.delete()

    runs.run_generation(run.pk)

    run.refresh_from_db()
    assert run.status == PlaygroundStatus.FAILED
    assert run.error == "“Gone soon”, the job this prompt was to compare with, was deleted."


def test_two_jobs_tuned_models_answer_the_same_prompt(owner, tmp_path, settings):
    from jobs.playground.cache import MODEL_CACHE
    from jobs.tests.test_playground_generation import store_as_tuned_model, tiny_pretrained

    settings.PLAYGROUND_CACHE_DIR = tmp_path / "model-cache"
    MODEL_CACHE.clear()
    fox = store_as_tuned_model(
        make_job(owner, name="Fox"), tiny_pretrained(tmp_path / "fox", always_says=" fox")
    )
    dog = store_as_tuned_model(
        make_job(owner, fox.dataset, name="Dog"), tiny_pretrained(tmp_path / "dog", always_says=" dog")
    )
    run = runs.submit_prompt(
        fox, prompt="The quick brown", max_new_tokens=3, temperature=0, top_p=1, rival=dog
    )

    runs.run_generation(run.pk)

    run.refresh_from_db()
    MODEL_CACHE.clear()
    assert run.status == PlaygroundStatus.DONE, run.error
    assert run.tuned_output.split() == ["fox", "fox", "fox"]
    assert run.base_output.split() == ["dog", "dog", "dog"]
    assert run.base_label == f"Dog (job {dog.pk})"
