# ruff: noqa: F811 (the fixtures imported from test_sagemaker_support are redefined as arguments)
"""The jobs admin: filters, read-only AWS fields, and the stop / retry / mark failed / poll now actions."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobs.backends import sagemaker as sm
from jobs.models import JobStatus, LogLine, TrainingJob
from jobs.tests.test_local_backend import run_endlessly_doing
from jobs.tests.test_sagemaker_support import (  # noqa: F401 (fixtures)
    account,
    fake_aws,
    sagemaker_job,
    sagemaker_settings,
)
from jobs.tests.throwaway import celery_app_on, free_port

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/jobs/trainingjob/"


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def act(staff_client, action: str, *jobs: TrainingJob, follow: bool = True, **extra):
    data = {"action": action, "_selected_action": [job.pk for job in jobs], **extra}
    return staff_client.post(CHANGELIST, data, follow=follow)


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_the_list_shows_jobs_with_owner_state_progress_and_cost(
    staff_client, job_factory, django_assert_max_num_queries
):
    for n in range(5):
        job_factory(name=f"job {n}", step=n * 10, total_steps=100)

    with django_assert_max_num_queries(12):
        response = staff_client.get(CHANGELIST)

    assert response.status_code == 200
    body = response.content.decode()
    assert "job 4" in body and "40 % (40/100)" in body and "alice@example.com" in body


def test_the_list_filters_by_status_backend_instance_type_and_owner(
    staff_client, job_factory, outsider, sagemaker_settings
):
    failed = job_factory(name="Failed one", status=JobStatus.FAILED)
    job_factory(name="Queued one")
    cloud = sagemaker_job(outsider, name="Cloud one")

    by_status = staff_client.get(CHANGELIST, {"status__exact": "failed"}).content.decode()
    by_backend = staff_client.get(CHANGELIST, {"backend__exact": "sagemaker"}).content.decode()
    by_instance = staff_client.get(
        CHANGELIST, {"instance_type__id__exact": cloud.instance_type_id}
    ).content.decode()
    by_owner = staff_client.get(CHANGELIST, {"owner__id__exact": failed.owner_id}).content.decode()

    assert "Failed one" in by_status and "Queued one" not in by_status
    assert "Cloud one" in by_backend and "Failed one" not in by_backend
    assert "Cloud one" in by_instance and "Queued one" not in by_instance
    assert "Failed one" in by_owner and "Queued one" in by_owner and "Cloud one" not in by_owner


def test_the_job_page_shows_the_aws_fields_read_only_and_no_job_is_added_here(
    staff_client, owner, sagemaker_settings
):
    job = sagemaker_job(owner)

    page = staff_client.get(f"{CHANGELIST}{job.pk}/change/")
    staff_client.post(
        f"{CHANGELIST}{job.pk}/change/",
        {"name": "Renamed", "sagemaker_job_name": "hijacked", "status": "completed", "cost_usd": "0"},
    )

    assert page.status_code == 200
    assert job.sagemaker_job_name in page.content.decode()
    assert 'name="sagemaker_job_name"' not in page.content.decode()
    job_after = TrainingJob.objects.get(pk=job.pk)
    assert job_after.name == "Renamed"
    assert (job_after.sagemaker_job_name, job_after.status) == (job.sagemaker_job_name, job.status)
    assert staff_client.get(f"{CHANGELIST}add/").status_code == 403


# --- stop ---


def test_stop_stops_a_queued_job_at_once_and_a_running_one_through_stopping(staff_client, job_factory):
    queued = job_factory()
    running = job_factory(status=JobStatus.TRAINING)
    done = job_factory(status=JobStatus.COMPLETED)

    response = act(staff_client, "stop_jobs", queued, running, done)

    assert response.status_code == 200
    assert messages_of(response) == ["2 job(s) stopped or stopping.", "1 job(s) had already ended."]
    statuses = {job.pk: job.status for job in TrainingJob.objects.all()}
    assert statuses == {queued.pk: "stopped", running.pk: "stopping", done.pk: "completed"}


def test_stop_asks_sagemaker_to_stop_a_running_cloud_job(
    staff_client, owner, sagemaker_settings, django_capture_on_commit_callbacks, monkeypatch
):
    job = sagemaker_job(owner)
    asked = []
    monkeypatch.setattr(sm, "stop_job", lambda job_id, **kwargs: asked.append(job_id))

    with django_capture_on_commit_callbacks(execute=True):
        act(staff_client, "stop_jobs", job)

    job.refresh_from_db()
    assert job.status == JobStatus.STOPPING
    assert asked == [job.pk]


# --- retry ---


def test_retry_queues_a_new_attempt_of_a_failed_job_and_refuses_others(
    staff_client, job_factory, django_capture_on_commit_callbacks
):
    failed = job_factory(name="Broke", status=JobStatus.FAILED)
    running = job_factory(name="Busy", status=JobStatus.TRAINING)

    with django_capture_on_commit_callbacks() as callbacks:
        response = act(staff_client, "retry_jobs", failed, running)

    again = TrainingJob.objects.exclude(pk__in=[failed.pk, running.pk]).get()
    assert (again.name, again.attempt, again.status) == ("Broke", 2, JobStatus.QUEUED)
    assert again.hyperparameters == failed.hyperparameters and again.dataset == failed.dataset
    assert len(callbacks) == 1  # handed to its backend after commit
    assert f"“Busy” (#{running.pk}): Only a failed or stopped job can be retried" in messages_of(response)[0]
    assert "1 job(s) queued again." in messages_of(response)


def test_retrying_the_same_job_again_from_the_admin_makes_no_second_attempt(staff_client, job_factory):
    failed = job_factory(name="Broke", status=JobStatus.FAILED)
    act(staff_client, "retry_jobs", failed)

    response = act(staff_client, "retry_jobs", failed)

    again = TrainingJob.objects.get(attempt=2)
    assert TrainingJob.objects.count() == 2
    retried = f"“Broke” (#{failed.pk}) was retried already: attempt 2 is job #{again.pk}."
    assert messages_of(response) == [retried]


# --- mark failed ---


def test_mark_failed_asks_for_a_reason_first_and_says_running_work_is_stopped(staff_client, job_factory):
    job = job_factory(name="Stuck", status=JobStatus.TRAINING)

    response = act(staff_client, "mark_failed", job)

    assert response.status_code == 200
    body = response.content.decode()
    assert "Stuck" in body and 'name="reason"' in body
    assert "1 of these is still running: it is stopped first" in body
    assert 'name="action" value="mark_failed"' in body
    job.refresh_from_db()
    assert job.status == JobStatus.TRAINING


def test_mark_failed_fails_a_queued_job_at_once_and_leaves_ended_ones(staff_client, job_factory, staff):
    waiting = job_factory()
    done = job_factory(status=JobStatus.COMPLETED)

    response = act(
        staff_client, "mark_failed", waiting, done, apply="1", reason="The instance vanished; retry it."
    )

    assert messages_of(response) == ["1 job(s) marked failed.", "1 job(s) had already ended."]
    waiting.refresh_from_db()
    assert (waiting.status, waiting.status_message) == (JobStatus.FAILED, "The instance vanished; retry it.")
    assert waiting.finished_at is not None
    assert LogLine.objects.filter(job=waiting, text__contains="Marked failed by operator").exists()
    done.refresh_from_db()
    assert done.status == JobStatus.COMPLETED


def test_mark_failed_stops_a_local_run_first_then_fails_it_with_the_reason(
    staff_client, job_factory, monkeypatch, tmp_path
):
    job = job_factory(name="Runaway")
    answers = []

    def the_operator_marks_it_failed():
        answers.append(act(staff_client, "mark_failed", job, apply="1", reason="Hogs the GPU; retry it."))
        job.refresh_from_db()
        assert job.status == JobStatus.STOPPING  # not failed yet: its script still runs

    seconds = run_endlessly_doing(job, the_operator_marks_it_failed, monkeypatch, tmp_path)

    assert seconds < 20  # the worker stopped the script (it would have trained for 30 s)
    assert messages_of(answers[0]) == [
        "1 job(s) marked failed; 1 of them still ran: they are being stopped and end failed once stopped."
    ]
    job.refresh_from_db()
    assert (job.status, job.status_message) == (JobStatus.FAILED, "Hogs the GPU; retry it.")
    assert job.finished_at is not None
    log = list(LogLine.objects.filter(job=job).values_list("text", flat=True))
    assert "Marked failed by operator: Hogs the GPU; retry it." in log
    assert "Stop requested: asking the training script to stop" in log


def test_mark_failed_stops_a_sagemaker_job_first_then_fails_it_with_the_reason(
    staff_client, owner, account, django_capture_on_commit_callbacks, monkeypatch
):
    job = sagemaker_job(owner, status=JobStatus.TRAINING)
    account.add_job(job.sagemaker_job_name, "Training")

    with django_capture_on_commit_callbacks(execute=True):
        act(staff_client, "mark_failed", job, apply="1", reason="Wrong dataset; clone it.")

    assert [operation for operation, _ in account.requests] == ["StopTrainingJob"]
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPING  # AWS still bills until the stop lands

    account.change(job.sagemaker_job_name, "Stopped", "Stopped", BillableTimeInSeconds=120)
    for cycle in range(1, 4):
        sm.poll_jobs(now=account.clock + timedelta(seconds=30 * cycle), sleep=lambda seconds: None)

    job.refresh_from_db()
    assert (job.status, job.status_message) == (JobStatus.FAILED, "Wrong dataset; clone it.")
    assert job.billable_seconds == 120 and job.cost_usd > 0
    assert LogLine.objects.filter(job=job, text__startswith="Stopped; 120 billable seconds").exists()


def test_mark_failed_without_a_reason_asks_again_and_changes_nothing(staff_client, job_factory):
    job = job_factory(status=JobStatus.TRAINING)

    response = act(staff_client, "mark_failed", job, apply="1", reason="  ")

    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    job.refresh_from_db()
    assert job.status == JobStatus.TRAINING


# --- poll now ---


def test_poll_now_queues_one_poll_for_running_sagemaker_jobs(
    staff_client, owner, sagemaker_settings, django_capture_on_commit_callbacks, monkeypatch
):
    jobs = [sagemaker_job(owner, name=f"Cloud {n}") for n in range(2)]
    polls = []
    monkeypatch.setattr(sm, "poll_jobs", lambda **kwargs: polls.append(kwargs))

    with django_capture_on_commit_callbacks(execute=True):
        response = act(staff_client, "poll_now", *jobs)

    assert polls == [{}]
    assert (
        "A SageMaker poll is queued" in messages_of(response)[0]
        and "these 2 included" in messages_of(response)[0]
    )


def test_poll_now_while_the_broker_is_down_answers_all_the_same(
    staff_client, owner, sagemaker_settings, django_capture_on_commit_callbacks
):
    job = sagemaker_job(owner)
    nobody = f"redis://127.0.0.1:{free_port()}/0"

    with celery_app_on(nobody), django_capture_on_commit_callbacks(execute=True):
        response = act(staff_client, "poll_now", job)

    assert response.status_code == 200
    assert "A SageMaker poll is queued" in messages_of(response)[0]  # the beat polls again within 30 s


def test_poll_now_with_no_running_sagemaker_job_polls_nothing(
    staff_client, job_factory, django_capture_on_commit_callbacks
):
    job = job_factory()

    with django_capture_on_commit_callbacks() as callbacks:
        response = act(staff_client, "poll_now", job)

    assert callbacks == []
    assert messages_of(response) == ["None of the selected jobs is running on SageMaker: nothing to poll."]
