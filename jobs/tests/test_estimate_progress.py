"""Progress that never claims to be done early: the card names the phase, and the time left
counts the phases still to come. Real event sequences go through lifecycle.record_event."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import lifecycle
from jobs.models import JobStatus, TrainingJob
from jobs.tests.conftest import make_job

pytestmark = pytest.mark.django_db

S = JobStatus
HTMX = {"HX-Request": "true"}
# What the launch estimate expected of each phase (seconds).
EXPECTED = {
    "starting": 5,
    "preparing_data": 2,
    "loading_model": 3,
    "training": 60,
    "evaluating": 20,
    "saving": 10,
    "generating_samples": 5,
    "uploading": 2,
}


@pytest.fixture
def job(owner):
    return make_job(owner, estimated_seconds=sum(EXPECTED.values()), estimated_phases=EXPECTED)


def card(client, job) -> tuple[str, str, str]:
    """(the phase shown, the time left shown, the whole card)."""
    page = client.get(f"/jobs/{job.pk}/progress/", headers=HTMX).content.decode()
    phase = re.search(r"data-phase>([^<]*)<", page)
    left = re.search(r"data-time-left>([^<]*)<", page)
    return (phase.group(1) if phase else ""), (left.group(1).strip() if left else ""), page


def seconds(shown: str) -> int:
    match = re.fullmatch(r"(?:(\d+) min ?)?(?:(\d+) s)?", shown)
    assert match and shown, shown
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def event(job, kind: str, **fields) -> None:
    lifecycle.record_event(job.pk, {"event": kind, **fields})


def test_each_phase_is_named_and_the_time_left_counts_what_is_still_to_come(owner_client, job):
    lifecycle.transition(job.pk, S.PREPARING, "Preparing the data and the model")
    phase, left, _ = card(owner_client, job)
    assert phase == "Starting"
    assert 105 <= seconds(left) <= 107

    event(job, "phase", phase="preparing_data")
    assert card(owner_client, job)[0] == "Preparing data"
    event(job, "phase", phase="loading_model")
    phase, left, _ = card(owner_client, job)
    assert phase == "Loading the model" and 98 <= seconds(left) <= 100

    event(job, "start", total_steps=10, total_parameters=480_000, precision="fp32", world_size=1)
    event(job, "phase", phase="training")
    event(job, "progress", step=5, total_steps=10, loss=3.2, tokens_per_second=300.0, eta_seconds=30)
    phase, left, _ = card(owner_client, job)
    # The script's own ETA for training, plus evaluation, save, samples and upload.
    assert phase == "Training" and seconds(left) == 30 + 20 + 10 + 5 + 2

    # The last step: training says nothing is left, but four phases are.
    event(job, "progress", step=10, total_steps=10, loss=3.0, tokens_per_second=300.0, eta_seconds=0)
    phase, left, page = card(owner_client, job)
    assert 'data-percent="100"' in page
    assert phase == "Training" and seconds(left) == 37

    event(job, "phase", phase="evaluating")
    phase, left, _ = card(owner_client, job)
    assert phase == "Evaluating" and 36 <= seconds(left) <= 37 and left != "0 s"

    event(job, "phase", phase="saving")
    phase, left, _ = card(owner_client, job)
    assert phase == "Saving" and 16 <= seconds(left) <= 17

    event(job, "phase", phase="generating_samples")
    event(job, "done", step=10, total_steps=10, train_tokens=3000, phase_seconds={"training": 9.0})
    assert card(owner_client, job)[0] == "Generating samples"

    lifecycle.transition(job.pk, S.UPLOADING, "Saving the tuned model")
    phase, left, page = card(owner_client, job)
    assert phase == "Uploading" and 1 <= seconds(left) <= 2
    assert 'data-status="uploading"' in page


def test_a_phase_that_runs_long_says_so_rather_than_nothing_left(owner_client, job):
    lifecycle.transition(job.pk, S.PREPARING, "Preparing")
    event(job, "phase", phase="evaluating")
    # Evaluation has run 25 s of the 20 expected: what follows is still to come.
    TrainingJob.objects.filter(pk=job.pk).update(phase_started_at=timezone.now() - timedelta(seconds=25))
    assert seconds(card(owner_client, job)[1]) == 17

    lifecycle.transition(job.pk, S.UPLOADING, "Saving the tuned model")
    TrainingJob.objects.filter(pk=job.pk).update(phase_started_at=timezone.now() - timedelta(seconds=60))
    phase, left, _ = card(owner_client, job)
    assert phase == "Uploading" and left == "finishing"


def test_a_finished_job_shows_no_phase_and_says_what_it_took(owner_client, job):
    lifecycle.transition(job.pk, S.PREPARING, "Preparing")
    event(job, "phase", phase="training")
    TrainingJob.objects.filter(pk=job.pk).update(started_at=timezone.now() - timedelta(seconds=130))
    lifecycle.transition(job.pk, S.COMPLETED, "Completed")

    phase, left, page = card(owner_client, job)
    assert phase == "" and "data-phase" not in page
    assert left.startswith("estimated 1 min 47 s, took 2 min 1") and left != "0 s"


def test_the_job_list_names_the_phase_of_each_running_job(owner_client, job, owner):
    other = make_job(owner, name="Waiting")
    lifecycle.transition(job.pk, S.PREPARING, "Preparing")
    event(job, "phase", phase="loading_model")

    page = owner_client.get("/jobs/").content.decode()

    row = page[page.index(f'data-job="{job.pk}"') :]
    assert re.search(r"data-phase>Loading the model<", row[: row.index("</tr>")])
    waiting = page[page.index(f'data-job="{other.pk}"') :]
    assert "data-phase" not in waiting[: waiting.index("</tr>")]


def test_a_job_without_phase_estimates_falls_back_to_the_scripts_eta(owner_client, owner):
    plain = make_job(owner)
    lifecycle.transition(plain.pk, S.PREPARING, "Preparing")
    event(plain, "phase", phase="training")
    event(plain, "progress", step=1, total_steps=4, loss=3.0, eta_seconds=42)

    assert card(owner_client, plain)[1] == "42 s"
