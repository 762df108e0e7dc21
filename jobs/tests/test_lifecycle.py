"""The job state machine: legal moves only, and no event ever moves a job backwards."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs import lifecycle
from jobs.models import JobStatus, LogLine, MetricPoint, TrainingJob

pytestmark = pytest.mark.django_db
S = JobStatus


def test_a_job_runs_through_its_states(job):
    assert lifecycle.transition(job.pk, S.PREPARING)
    lifecycle.record_event(job.pk, {"event": "start", "total_steps": 10})
    lifecycle.record_event(
        job.pk, {"event": "progress", "step": 4, "total_steps": 10, "loss": 2.5, "epoch": 0.4}
    )
    job.refresh_from_db()
    assert (job.status, job.step, job.total_steps, job.loss, job.percent) == (S.TRAINING, 4, 10, 2.5, 40)
    assert job.training_started_at is not None
    assert lifecycle.transition(job.pk, S.UPLOADING)
    assert lifecycle.transition(job.pk, S.COMPLETED, "Completed")
    job.refresh_from_db()
    assert job.status == S.COMPLETED
    assert job.finished_at is not None
    assert job.step == 10


def test_a_finished_job_cannot_be_restarted(job):
    lifecycle.transition(job.pk, S.FAILED, "boom")
    for target in (S.QUEUED, S.PREPARING, S.TRAINING, S.UPLOADING, S.COMPLETED, S.STOPPING, S.STOPPED):
        assert not lifecycle.transition(job.pk, target)
    job.refresh_from_db()
    assert (job.status, job.status_message) == (S.FAILED, "boom")


def test_a_late_progress_event_does_not_rewind_the_bar(job):
    lifecycle.transition(job.pk, S.TRAINING)
    lifecycle.record_event(job.pk, {"event": "progress", "step": 8, "total_steps": 10, "loss": 1.0})
    lifecycle.record_event(job.pk, {"event": "progress", "step": 5, "total_steps": 10, "loss": 3.0})
    job.refresh_from_db()
    assert (job.step, job.loss) == (8, 1.0)
    assert list(MetricPoint.objects.values_list("step", flat=True)) == [8]


def test_a_repeated_event_is_recorded_once(job):
    lifecycle.transition(job.pk, S.TRAINING)
    event = {"event": "progress", "step": 3, "total_steps": 10, "loss": 2.0}
    lifecycle.record_event(job.pk, event)
    lifecycle.record_event(job.pk, event)
    lifecycle.record_event(job.pk, {"event": "eval", "step": 3, "eval_loss": 2.2})
    lifecycle.record_event(job.pk, {"event": "eval", "step": 3, "eval_loss": 2.2})
    assert MetricPoint.objects.filter(job=job).count() == 2


def test_progress_after_the_end_changes_nothing(job):
    lifecycle.transition(job.pk, S.TRAINING)
    lifecycle.transition(job.pk, S.STOPPED)
    lifecycle.record_event(job.pk, {"event": "progress", "step": 9, "total_steps": 10, "loss": 0.5})
    job.refresh_from_db()
    assert (job.status, job.step) == (S.STOPPED, 0)


def test_an_error_event_fails_the_job_with_its_message(job):
    lifecycle.transition(job.pk, S.TRAINING)
    lifecycle.record_event(job.pk, {"event": "error", "message": "learning_rate must be at most 1"})
    job.refresh_from_db()
    assert (job.status, job.status_message) == (S.FAILED, "learning_rate must be at most 1")


def test_an_error_while_stopping_still_ends_stopped(job):
    lifecycle.transition(job.pk, S.TRAINING)
    lifecycle.request_stop(job)
    lifecycle.record_event(job.pk, {"event": "error", "message": "Interrupted by SIGTERM"})
    job.refresh_from_db()
    assert job.status == S.STOPPING
    assert lifecycle.transition(job.pk, S.STOPPED)


def test_stopping_a_queued_job_stops_it_at_once(job):
    assert lifecycle.request_stop(job)
    job.refresh_from_db()
    assert job.status == S.STOPPED


def test_a_finished_job_cannot_be_stopped(job):
    lifecycle.transition(job.pk, S.FAILED)
    job.refresh_from_db()
    assert not lifecycle.request_stop(job)


def test_the_log_keeps_a_bounded_tail(job):
    for batch in range(12):
        lifecycle.append_log(job.pk, [f"line {batch * 50 + i}" for i in range(50)])
    job.refresh_from_db()
    assert job.log_seq == 600
    seqs = list(LogLine.objects.filter(job=job).values_list("seq", flat=True))
    assert seqs[-1] == 600
    assert len(seqs) <= lifecycle.LOG_TAIL_LINES + 100
    assert LogLine.objects.get(job=job, seq=600).text == "line 599"


def test_a_nul_a_script_printed_is_kept_as_a_replacement_character(job):
    lifecycle.append_log(job.pk, ["sample: a\x00b"])
    lifecycle.transition(job.pk, S.FAILED, "finetune.py failed: bad row \x00")

    job.refresh_from_db()
    assert LogLine.objects.get(job=job).text == "sample: a\N{REPLACEMENT CHARACTER}b"
    assert job.status_message == "finetune.py failed: bad row \N{REPLACEMENT CHARACTER}"


def test_the_reaper_fails_jobs_whose_worker_went_silent(job, other_job):
    lifecycle.transition(job.pk, S.TRAINING)
    lifecycle.transition(other_job.pk, S.TRAINING)
    long_ago = timezone.now() - timedelta(minutes=5)
    TrainingJob.objects.filter(pk=job.pk).update(heartbeat_at=long_ago)

    assert lifecycle.reap_stale_jobs() == [job.pk]
    job.refresh_from_db()
    other_job.refresh_from_db()
    assert job.status == S.FAILED
    assert job.status_message.startswith("The worker stopped responding at ")
    assert other_job.status == S.TRAINING


# --- an operator's "mark failed" ---


def test_marking_a_queued_job_failed_fails_it_at_once(job):
    assert lifecycle.mark_failed(job, "Bad settings") == S.FAILED
    job.refresh_from_db()
    assert (job.status, job.status_message) == (S.FAILED, "Bad settings")


@pytest.mark.parametrize(
    ("how_its_work_ends", "message"),
    [(S.STOPPED, "Stopped"), (S.COMPLETED, "Completed"), (S.FAILED, "SageMaker: out of memory")],
)
def test_a_running_job_marked_failed_stops_first_then_ends_failed_with_the_reason(
    job, how_its_work_ends, message
):
    lifecycle.transition(job.pk, S.TRAINING)

    assert lifecycle.mark_failed(job, "Wrong dataset; clone it.") == S.STOPPING
    job.refresh_from_db()
    assert (job.status, job.status_message) == (
        S.STOPPING,
        "Stopping, to be marked failed: Wrong dataset; clone it.",
    )

    assert lifecycle.transition(job.pk, how_its_work_ends, message)  # the backend, as for any stop
    job.refresh_from_db()
    assert (job.status, job.status_message) == (S.FAILED, "Wrong dataset; clone it.")
    assert job.finished_at is not None


def test_a_job_its_owner_is_stopping_ends_failed_when_an_operator_marks_it(job):
    lifecycle.transition(job.pk, S.TRAINING)
    lifecycle.request_stop(job)

    assert lifecycle.mark_failed(job, "Abuse") == S.STOPPING
    lifecycle.transition(job.pk, S.STOPPED, "Stopped")
    job.refresh_from_db()
    assert (job.status, job.status_message) == (S.FAILED, "Abuse")


def test_a_job_that_ended_is_not_marked_failed(job):
    lifecycle.transition(job.pk, S.STOPPED)

    assert lifecycle.mark_failed(job, "Too late") is None
    job.refresh_from_db()
    assert (job.status, job.fail_reason) == (S.STOPPED, "")


def test_a_job_marked_failed_whose_worker_went_silent_is_reaped_failed_with_the_reason(job):
    lifecycle.transition(job.pk, S.TRAINING)
    lifecycle.mark_failed(job, "Hogs the GPU")
    TrainingJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))

    assert lifecycle.reap_stale_jobs() == [job.pk]
    job.refresh_from_db()
    assert (job.status, job.status_message) == (S.FAILED, "Hogs the GPU")
    assert LogLine.objects.get(job=job).text.endswith("the job was marked failed. You can retry it.")


def test_an_ordinary_stop_still_ends_stopped(job):
    lifecycle.transition(job.pk, S.TRAINING)
    lifecycle.request_stop(job)
    lifecycle.transition(job.pk, S.STOPPED, "Stopped")
    job.refresh_from_db()
    assert (job.status, job.status_message) == (S.STOPPED, "Stopped")


def test_the_owner_gets_one_email_when_a_job_ends(job, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.transition(job.pk, S.TRAINING)
        lifecycle.transition(job.pk, S.COMPLETED)
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == [job.owner.email]
    assert f"/jobs/{job.pk}/" in mail.outbox[0].body
    from jobs.notifications import send_job_finished_email

    assert not send_job_finished_email(job.pk)
    assert len(mail.outbox) == 1


def test_no_email_for_someone_who_turned_them_off(job, django_capture_on_commit_callbacks):
    from accounts.models import get_profile

    profile = get_profile(job.owner)
    profile.email_notifications = False
    profile.save()
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.transition(job.pk, S.FAILED, "boom")
    assert mail.outbox == []


EVENTS = st.one_of(
    st.sampled_from(list(S)).map(lambda target: ("transition", target)),
    st.builds(
        lambda step, loss: ("event", {"event": "progress", "step": step, "total_steps": 50, "loss": loss}),
        st.integers(0, 50),
        st.floats(0, 10),
    ),
    st.just(("event", {"event": "start", "total_steps": 50})),
    st.just(("event", {"event": "error", "message": "x"})),
    st.just(("event", {"event": "done", "train_loss": 1.0})),
    st.just(("stop", None)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(EVENTS, max_size=25))
def test_no_sequence_of_events_moves_a_job_backwards(job_factory, steps):
    job = job_factory()
    rank, step, final_status = lifecycle.RANK[S.QUEUED], 0, None
    for kind, payload in steps:
        if kind == "transition":
            lifecycle.transition(job.pk, payload)
        elif kind == "event":
            lifecycle.record_event(job.pk, payload)
        else:
            lifecycle.request_stop(TrainingJob.objects.get(pk=job.pk))
        job.refresh_from_db()
        assert lifecycle.RANK[job.status] >= rank
        assert job.step >= step
        if final_status is not None:  # once final, nothing changes any more
            assert job.status == final_status
        elif job.is_final:
            final_status = job.status
        rank, step = lifecycle.RANK[job.status], job.step
