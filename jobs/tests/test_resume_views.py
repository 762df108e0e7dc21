"""Resume and Continue on the job page, in the admin and by command: who may, when, and what it makes."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from jobs import lifecycle
from jobs.models import Backend, JobStatus, MetricPoint, TrainingJob
from jobs.tests.conftest import make_job, make_ready_dataset
from jobs.tests.test_hostile_forms import launch_data
from llmtuner import storage

pytestmark = pytest.mark.django_db


def set_state(job: TrainingJob, status: str, **fields) -> TrainingJob:
    TrainingJob.objects.filter(pk=job.pk).update(status=status, **fields)
    job.refresh_from_db()
    return job


def stored_checkpoint(job: TrainingJob, step: int) -> TrainingJob:
    """The job ended with a checkpoint at `step` in storage (as the local backend leaves it)."""
    prefix = f"{job.storage_prefix()}/checkpoints/checkpoint-{step}"
    storage.save(f"{prefix}/model.safetensors", io.BytesIO(b"weights"))
    storage.save(f"{prefix}/state.json", io.BytesIO(json.dumps({"step": step}).encode()))
    return set_state(job, job.status, checkpoint_step=step)


@pytest.fixture
def stopped_with_checkpoint(job):
    set_state(job, JobStatus.STOPPED, step=17, total_steps=30)
    return stored_checkpoint(job, 15)


@pytest.fixture
def completed_job(job):
    prefix = f"{job.storage_prefix()}/model"
    storage.save(f"{prefix}/config.json", io.BytesIO(b"{}"))
    return set_state(job, JobStatus.COMPLETED, model_prefix=prefix, step=30, total_steps=30)


def continue_form(client: Client, job: TrainingJob) -> dict:
    page = client.get(f"/jobs/{job.pk}/continue/").content.decode()
    token = re.search(r'name="submit_token" value="([^"]+)"', page)
    assert token
    return {**launch_data(job.dataset, job.base_model, epochs="3"), "submit_token": token[1]}


# --- Who may ---------------------------------------------------------------------------------


def test_every_new_url_is_404_for_an_outsider_and_makes_nothing(
    outsider_client, stopped_with_checkpoint, owner
):
    done = make_job(owner, stopped_with_checkpoint.dataset, name="Done")
    storage.save(f"{done.storage_prefix()}/model/config.json", io.BytesIO(b"{}"))
    set_state(done, JobStatus.COMPLETED, model_prefix=f"{done.storage_prefix()}/model")
    before = TrainingJob.objects.count()

    assert (
        outsider_client.post(f"/jobs/{stopped_with_checkpoint.pk}/resume/", {"backend": "local"}).status_code
        == 404
    )
    assert outsider_client.post(f"/jobs/{stopped_with_checkpoint.pk}/retry/").status_code == 404
    assert outsider_client.get(f"/jobs/{done.pk}/continue/").status_code == 404
    assert (
        outsider_client.post(
            f"/jobs/{done.pk}/continue/", launch_data(done.dataset, done.base_model)
        ).status_code
        == 404
    )

    assert TrainingJob.objects.count() == before


def test_anonymous_is_sent_to_log_in(client, stopped_with_checkpoint):
    response = client.post(f"/jobs/{stopped_with_checkpoint.pk}/resume/", {"backend": "local"})
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")
    assert client.get(f"/jobs/{stopped_with_checkpoint.pk}/continue/").status_code == 302


def test_resume_is_post_only_and_needs_the_csrf_token(owner, stopped_with_checkpoint):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)

    assert client.get(f"/jobs/{stopped_with_checkpoint.pk}/resume/").status_code == 405
    assert client.post(f"/jobs/{stopped_with_checkpoint.pk}/resume/", {"backend": "local"}).status_code == 403
    assert TrainingJob.objects.count() == 1


# --- Resume ----------------------------------------------------------------------------------


def test_a_retry_of_a_job_with_a_checkpoint_resumes_from_it(owner_client, stopped_with_checkpoint):
    job = stopped_with_checkpoint

    response = owner_client.post(f"/jobs/{job.pk}/retry/", follow=True)

    new = TrainingJob.objects.get(retry_of=job)
    assert response.redirect_chain == [(f"/jobs/{new.pk}/", 302)]
    assert f"Attempt 2 of “{job.name}” is queued: it resumes from step 15." in response.content.decode()
    assert (new.status, new.attempt, new.resumed_at_step) == (JobStatus.QUEUED, 2, 15)
    # The chain shares the first attempt's checkpoints: the script finds checkpoint-15 there.
    assert new.checkpoint_prefix == f"{job.storage_prefix()}/checkpoints/"


def test_a_retry_of_a_job_without_a_checkpoint_starts_over(owner_client, job):
    set_state(job, JobStatus.FAILED, step=4)

    owner_client.post(f"/jobs/{job.pk}/retry/")

    new = TrainingJob.objects.get(retry_of=job)
    assert new.resumed_at_step is None and new.step == 0


def test_the_page_offers_resume_only_where_a_checkpoint_is(owner_client, job_factory):
    with_one = stored_checkpoint(set_state(job_factory(name="With"), JobStatus.FAILED, step=9), 8)
    without = set_state(job_factory(name="Without"), JobStatus.STOPPED, step=3)
    running = set_state(job_factory(name="Running"), JobStatus.TRAINING, step=3, checkpoint_step=2)

    page = owner_client.get(f"/jobs/{with_one.pk}/").content.decode()
    assert 'data-resume-step="8">Resume from step 8</button>' in page
    assert "data-resume-form" in page and "Its last checkpoint is at step 8" in page

    page = owner_client.get(f"/jobs/{without.pk}/").content.decode()
    assert 'data-action="retry">Retry</button>' in page
    assert "data-resume-step" not in page and "data-resume-form" not in page
    assert (
        "“Without” has no checkpoint to resume from: it was set to save none (save_steps is 0). "
        "Retry starts it over from step 0."
    ) in page

    page = owner_client.get(f"/jobs/{running.pk}/").content.decode()
    assert 'data-action="retry"' not in page and "data-resume-form" not in page


def test_the_polled_card_says_resume_once_the_job_ends_with_a_checkpoint(owner_client, job):
    htmx = {"HX-Request": "true"}
    set_state(job, JobStatus.TRAINING, step=20, total_steps=30)
    lifecycle.record_event(job.pk, {"event": "checkpoint", "step": 20, "path": "/tmp/x"})
    lifecycle.transition(job.pk, JobStatus.STOPPED, "Stopped")

    response = owner_client.get(f"/jobs/{job.pk}/progress/", headers=htmx)

    assert response.status_code == 286
    assert 'data-resume-step="20">Resume from step 20</button>' in response.content.decode()


def test_resume_on_another_backend(owner_client, stopped_with_checkpoint):
    job = stopped_with_checkpoint
    TrainingJob.objects.filter(pk=job.pk).update(backend=Backend.SAGEMAKER)

    response = owner_client.post(f"/jobs/{job.pk}/resume/", {"backend": "local"}, follow=True)

    new = TrainingJob.objects.get(retry_of=job)
    assert (new.backend, new.instance_type, new.resumed_at_step) == (Backend.LOCAL, None, 15)
    assert "is queued on This machine: it resumes from step 15." in response.content.decode()


def test_resume_on_sagemaker_needs_it_configured_and_an_instance_type(
    owner_client, stopped_with_checkpoint, settings
):
    settings.SAGEMAKER_ROLE_ARN = ""
    job = stopped_with_checkpoint

    response = owner_client.post(f"/jobs/{job.pk}/resume/", {"backend": "sagemaker"}, follow=True)

    assert "SageMaker is not configured" in response.content.decode()
    assert not TrainingJob.objects.filter(retry_of=job).exists()


def test_resume_refuses_a_job_without_a_checkpoint_and_says_retry_starts_over(owner_client, job):
    set_state(job, JobStatus.FAILED, step=5, hyperparameters={**job.hyperparameters, "save_steps": 10})

    response = owner_client.post(f"/jobs/{job.pk}/resume/", {"backend": "local"}, follow=True)

    assert (
        "has no checkpoint to resume from: it ended before its first checkpoint" in response.content.decode()
    )
    assert not TrainingJob.objects.filter(retry_of=job).exists()


def test_double_clicks_make_one_attempt(
    owner_client, stopped_with_checkpoint, django_capture_on_commit_callbacks
):
    job = stopped_with_checkpoint
    with django_capture_on_commit_callbacks() as callbacks:
        first = owner_client.post(f"/jobs/{job.pk}/resume/", {"backend": "local"})
        again = owner_client.post(f"/jobs/{job.pk}/resume/", {"backend": "local"}, follow=True)
        retried = owner_client.post(f"/jobs/{job.pk}/retry/")

    new = TrainingJob.objects.get(retry_of=job)
    assert first.url == again.redirect_chain[-1][0] == retried.url == f"/jobs/{new.pk}/"
    assert "was resumed already: this is attempt 2" in again.content.decode()
    assert TrainingJob.objects.count() == 2
    assert len(callbacks) == 1


# --- One curve -------------------------------------------------------------------------------


def test_a_resumed_attempt_draws_one_curve_marked_where_it_resumed(owner_client, stopped_with_checkpoint):
    job = stopped_with_checkpoint
    for step in (5, 10, 15, 17):
        MetricPoint.objects.create(job=job, step=step, loss=3.0 - step / 10)
    owner_client.post(f"/jobs/{job.pk}/retry/")
    new = TrainingJob.objects.get(retry_of=job)

    lifecycle.transition(new.pk, JobStatus.PREPARING)
    lifecycle.record_event(new.pk, {"event": "start", "total_steps": 30, "resumed_from_step": 15})
    lifecycle.record_event(new.pk, {"event": "progress", "step": 20, "total_steps": 30, "loss": 1.0})
    lifecycle.record_event(new.pk, {"event": "start", "total_steps": 30, "resumed_from_step": 15})  # again

    data = owner_client.get(f"/jobs/{new.pk}/metrics/?after=0").json()
    assert [(step, loss) for _, step, loss, _ in data["points"]] == [
        (5, 2.5),
        (10, 2.0),
        (15, 1.5),
        (20, 1.0),
    ]
    assert data["resumed_at_step"] == 15
    new.refresh_from_db()
    assert new.step == 20 and new.resumed_at_step == 15
    page = owner_client.get(f"/jobs/{new.pk}/").content.decode()
    assert "This attempt resumed from the checkpoint at step 15" in page
    assert lifecycle.describe_event({"event": "start", "total_steps": 30, "resumed_from_step": 15}).endswith(
        "resumed from the checkpoint at step 15"
    )


def test_a_script_that_started_over_clears_the_marker(owner_client, stopped_with_checkpoint):
    owner_client.post(f"/jobs/{stopped_with_checkpoint.pk}/retry/")
    new = TrainingJob.objects.get(retry_of=stopped_with_checkpoint)

    lifecycle.record_event(new.pk, {"event": "start", "total_steps": 30, "resumed_from_step": 0})

    new.refresh_from_db()
    assert new.resumed_at_step is None
    assert "resumed_at_step" not in owner_client.get(f"/jobs/{new.pk}/metrics/?after=0").json()


# --- Continue --------------------------------------------------------------------------------


def test_continue_is_offered_on_a_completed_job_only(owner_client, completed_job, job_factory):
    page = owner_client.get(f"/jobs/{completed_job.pk}/").content.decode()
    assert 'data-action="continue">Continue training…</a>' in page

    failed = set_state(job_factory(name="Failed"), JobStatus.FAILED)
    assert 'data-action="continue"' not in owner_client.get(f"/jobs/{failed.pk}/").content.decode()
    response = owner_client.get(f"/jobs/{failed.pk}/continue/", follow=True)
    assert (
        "Only a completed job can be continued; this one is failed. Resume it instead."
        in response.content.decode()
    )


def test_the_continue_form_is_prefilled_like_a_clone(owner_client, completed_job):
    page = owner_client.get(f"/jobs/{completed_job.pk}/continue/").content.decode()

    assert f"Continue training “{completed_job.name}”" in page
    assert f'action="/jobs/{completed_job.pk}/continue/"' in page
    assert f'value="{completed_job.name} (continued)"' in page
    assert "starts from the tuned model of" in page


def test_continuing_makes_a_new_job_from_the_tuned_model_once(
    owner_client, completed_job, django_capture_on_commit_callbacks
):
    form = continue_form(owner_client, completed_job)
    other = make_ready_dataset(completed_job.owner, name="More proverbs")
    form["dataset"] = other.pk

    with django_capture_on_commit_callbacks() as callbacks:
        first = owner_client.post(f"/jobs/{completed_job.pk}/continue/", form)
        again = owner_client.post(f"/jobs/{completed_job.pk}/continue/", form, follow=True)

    new = TrainingJob.objects.get(continued_from=completed_job)
    assert first.status_code == 302 and first.url == f"/jobs/{new.pk}/"
    assert "was already launched from this form" in again.content.decode()
    assert (new.status, new.dataset, new.hyperparameters["epochs"]) == (JobStatus.QUEUED, other, 3)
    assert new.retry_of is None and new.checkpoint_prefix == ""  # its own fresh checkpoints
    assert len(callbacks) == 1
    page = owner_client.get(f"/jobs/{new.pk}/").content.decode()
    assert "Started from the tuned model of" in page


def test_continuing_an_adapter_with_full_fine_tuning_is_refused(owner_client, completed_job):
    TrainingJob.objects.filter(pk=completed_job.pk).update(
        method="lora",
        hyperparameters={**completed_job.hyperparameters, "method": "lora", "merge_adapter": False},
    )
    form = continue_form(owner_client, completed_job)

    response = owner_client.post(f"/jobs/{completed_job.pk}/continue/", form)

    assert response.status_code == 400
    assert "saved a LoRA adapter, which trains on as LoRA only" in response.content.decode()
    assert not TrainingJob.objects.filter(continued_from=completed_job).exists()


def test_a_completed_job_without_its_model_cannot_be_continued(owner_client, job):
    set_state(job, JobStatus.COMPLETED, model_prefix="")
    response = owner_client.get(f"/jobs/{job.pk}/continue/", follow=True)
    assert "no tuned model was saved" in response.content.decode()


# --- Operators -------------------------------------------------------------------------------


def test_the_admin_action_resumes_those_with_a_checkpoint(client, staff, owner, job_factory):
    with_one = stored_checkpoint(set_state(job_factory(name="With"), JobStatus.FAILED, step=9), 8)
    without = set_state(job_factory(name="Without"), JobStatus.STOPPED, step=3)
    client.force_login(staff)

    response = client.post(
        "/admin/jobs/trainingjob/",
        {"action": "resume_jobs", "_selected_action": [with_one.pk, without.pk]},
        follow=True,
    )

    page = response.content.decode()
    assert "1 job(s) resume from their last checkpoint." in page
    assert "has no checkpoint to resume from" in page
    assert TrainingJob.objects.get(retry_of=with_one).resumed_at_step == 8
    assert not TrainingJob.objects.filter(retry_of=without).exists()


def test_the_command_resumes_and_says_what_it_could_not(job_factory, capsys):
    with_one = stored_checkpoint(set_state(job_factory(name="With"), JobStatus.FAILED, step=9), 8)
    without = set_state(job_factory(name="Without"), JobStatus.STOPPED, step=3)

    with pytest.raises(CommandError, match="2 of 3 could not be resumed"):
        call_command("resume_jobs", str(with_one.pk), str(without.pk), "999999")

    out, err = capsys.readouterr()
    new = TrainingJob.objects.get(retry_of=with_one)
    assert f"#{with_one.pk}: attempt 2 is job #{new.pk} on local, from step 8" in out
    assert "1 resumed, 2 refused" in out
    assert f"#{without.pk}: “Without” has no checkpoint" in err and "#999999: no such job" in err

    call_command("resume_jobs", str(with_one.pk))  # again: the same attempt, nothing new
    assert f"resumed already, attempt 2 is job #{new.pk}" in capsys.readouterr().out
    assert TrainingJob.objects.filter(retry_of=with_one).count() == 1


def test_a_retry_of_a_continued_job_starts_from_the_same_tuned_model(owner_client, completed_job):
    owner_client.post(f"/jobs/{completed_job.pk}/continue/", continue_form(owner_client, completed_job))
    continued = TrainingJob.objects.get(continued_from=completed_job)
    set_state(continued, JobStatus.FAILED, step=2)

    owner_client.post(f"/jobs/{continued.pk}/retry/")

    again = TrainingJob.objects.get(retry_of=continued)
    assert again.continued_from == completed_job and again.resumed_at_step is None
