# ruff: noqa: F811 (the fixtures imported from test_sagemaker_support are redefined as arguments)
"""Polling SageMaker: status mapping, log tailing into the lifecycle, cost, throttling, the call budget.

botocore's Stubber answers (and checks each request against AWS's API model)
for the single-job stories; the 1,000-job cycles use StubAccount, which answers
at the same boundary and counts every call.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache

from jobs import lifecycle
from jobs.backends import sagemaker as sm
from jobs.backends.sagemaker.budget import BACKOFF_KEY
from jobs.backends.sagemaker.poll import LOCK_KEY, STOPPING_DESCRIBE_AFTER, WATERMARK_OVERLAP
from jobs.models import JobStatus, MetricPoint, TrainingJob
from jobs.tests.test_sagemaker_support import (  # noqa: F401 (fixtures)
    StubAccount,
    Stubs,
    account,
    description,
    fake_aws,
    log_event,
    progress_line,
    sagemaker_job,
    sagemaker_settings,
    stubs,
)

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
GROUP = "/aws/sagemaker/TrainingJobs"


def no_sleep(seconds: float) -> None:
    pass


def poll(at: datetime, **kwargs) -> sm.PollReport:
    return sm.poll_jobs(now=at, sleep=no_sleep, **kwargs)


def expect_describe(stubs: Stubs, job, status="InProgress", secondary="Training", **extra):
    stubs.sagemaker.add_response(
        "describe_training_job",
        description(job.sagemaker_job_name, status, secondary, **extra),
        {"TrainingJobName": job.sagemaker_job_name},
    )


def expect_streams(stubs: Stubs, job, *names: str):
    stubs.logs.add_response(
        "describe_log_streams",
        {"logStreams": [{"logStreamName": name} for name in names]},
        {"logGroupName": GROUP, "logStreamNamePrefix": f"{job.sagemaker_job_name}/"},
    )


def expect_events(stubs: Stubs, stream: str, lines: list[str], token: str | None, next_token: str):
    params = {"logGroupName": GROUP, "logStreamName": stream, "startFromHead": True, "limit": 1000}
    if token:
        params["nextToken"] = token
    stubs.logs.add_response(
        "get_log_events",
        {"events": [log_event(line) for line in lines], "nextForwardToken": next_token},
        params,
    )


def expect_list(stubs: Stubs, since: datetime, *summaries: dict):
    stubs.sagemaker.add_response(
        "list_training_jobs",
        {"TrainingJobSummaries": list(summaries)},
        {
            "LastModifiedTimeAfter": since,
            "NameContains": "llmtuner-job-",
            "MaxResults": 100,
            "SortBy": "CreationTime",
            "SortOrder": "Descending",
        },
    )


def summary(job, status: str, secondary: str, modified: datetime) -> dict:
    return {
        "TrainingJobName": job.sagemaker_job_name,
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{job.sagemaker_job_name}",
        "CreationTime": T0 - timedelta(minutes=10),
        "LastModifiedTime": modified,
        "TrainingJobStatus": status,
        "SecondaryStatus": secondary,
    }


# --- one job's life, seen through the poller ----------------------------------------------------------


def test_in_progress_to_completed_with_progress_logs_chart_and_cost(owner, stubs):
    job = sagemaker_job(owner)
    stream = f"{job.sagemaker_job_name}/algo-1-1700000000"

    # First cycle: never described, so no listing is needed; the job is training for 8 minutes.
    expect_describe(stubs, job, "InProgress", "Training", now=T0)
    expect_streams(stubs, job, stream)
    expect_events(
        stubs,
        stream,
        [
            "Installing requirements",
            progress_line("start", total_steps=30, epochs=1, samples=60),
            progress_line("progress", step=10, total_steps=30, epoch=0.33, loss=2.5, learning_rate=0.003),
        ],
        None,
        "f/3",
    )
    report = poll(T0 + timedelta(seconds=30))
    stubs.assert_done()
    job.refresh_from_db()

    assert report.calls == {"DescribeTrainingJob": 1, "DescribeLogStreams": 1, "GetLogEvents": 1}
    assert job.status == JobStatus.TRAINING
    assert (job.step, job.total_steps, job.loss) == (10, 30, 2.5)
    assert MetricPoint.objects.filter(job=job, step=10, loss=2.5).exists()
    # Logged the way the local backend logs the same lines.
    lines = list(job.log_lines.values_list("text", flat=True))
    assert lines[-3] == "Installing requirements"
    assert lines[-2] == lifecycle.describe_event(
        {"event": "start", "total_steps": 30, "epochs": 1, "samples": 60}
    )
    assert lines[-2].startswith("training 30 steps on 60 samples")
    assert lines[-1] == "step 10/30 loss 2.5 lr 0.003 - tokens/s"
    assert job.sagemaker_log_state["streams"] == {stream: "f/3"}
    assert job.training_started_at == T0 - timedelta(minutes=8)
    # 8.5 minutes at $1.408/h so far.
    assert job.cost_usd == Decimal("0.1995")

    # Second cycle: the listing shows it completed; its log is read to the end, then it completes.
    expect_list(
        stubs,
        T0 + timedelta(seconds=30) - WATERMARK_OVERLAP,  # a little before the previous cycle
        summary(job, "Completed", "Completed", T0 + timedelta(minutes=3)),
    )
    expect_describe(
        stubs,
        job,
        "Completed",
        "Completed",
        now=T0 + timedelta(minutes=3),
        BillableTimeInSeconds=600,
        TrainingTimeInSeconds=600,
        TrainingEndTime=T0 + timedelta(minutes=2),
        ModelArtifacts={
            "S3ModelArtifacts": "s3://bucket/users/1/jobs/1/llmtuner-job-1-1/output/model.tar.gz"
        },
    )
    # One instance without spot has one stream: it is read to its end, not looked for again.
    expect_events(
        stubs,
        stream,
        [
            progress_line("progress", step=30, total_steps=30, epoch=1.0, loss=1.25),
            progress_line("eval", step=30, total_steps=30, eval_loss=1.5),
            progress_line("done", step=30, total_steps=30, train_loss=1.3, eval_loss=1.5),
        ],
        "f/3",
        "f/6",
    )
    expect_events(stubs, stream, [], "f/6", "f/6")
    report = poll(T0 + timedelta(minutes=4))
    stubs.assert_done()
    job.refresh_from_db()

    assert job.status == JobStatus.COMPLETED
    assert job.status_message == "Completed on SageMaker: 600 billable seconds, $0.23"
    assert job.percent == 100 and job.eval_loss == 1.5
    assert job.metrics["train_loss"] == 1.3
    assert job.model_artifacts_uri.endswith("/output/model.tar.gz")
    assert (job.billable_seconds, job.training_seconds, job.cost_usd) == (600, 600, Decimal("0.2347"))
    assert job.sagemaker_log_state["drained"] is True
    assert report.finished == 1


def test_waiting_for_capacity_shows_what_aws_says_without_moving_the_job(owner, stubs):
    job = sagemaker_job(owner)
    expect_describe(
        stubs,
        job,
        "InProgress",
        "Pending",
        SecondaryStatusTransitions=[
            {"Status": "Starting", "StartTime": T0, "StatusMessage": "Preparing the instances for training"},
            {"Status": "Pending", "StartTime": T0, "StatusMessage": "Insufficient capacity error from EC2"},
        ],
    )
    report = poll(T0)
    job.refresh_from_db()
    assert job.status == JobStatus.PREPARING
    assert job.status_message == "Waiting for compute capacity: Insufficient capacity error from EC2"
    assert job.cost_usd == 0
    assert "GetLogEvents" not in report.calls  # no container yet, so no log to read


def test_a_failed_job_shows_the_failure_reason_even_without_any_log(owner, stubs):
    job = sagemaker_job(owner)
    expect_describe(
        stubs,
        job,
        "Failed",
        "Failed",
        FailureReason="ClientError: Artifact upload failed: Insufficient disk space",
        BillableTimeInSeconds=65,
    )
    stubs.logs.add_client_error(
        "describe_log_streams", service_error_code="ResourceNotFoundException", service_message="no log group"
    )
    poll(T0)
    stubs.assert_done()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.status_message == "SageMaker: ClientError: Artifact upload failed: Insufficient disk space"
    assert job.cost_usd == Decimal("0.0254")


def test_the_scripts_own_error_wins_over_sagemakers_summary(owner, stubs):
    job = sagemaker_job(owner)
    stream = f"{job.sagemaker_job_name}/algo-1-1"
    expect_describe(stubs, job, "Failed", "Failed", FailureReason="AlgorithmError: exit code 1")
    expect_streams(stubs, job, stream)
    expect_events(
        stubs, stream, [progress_line("error", message="CUDA out of memory: lower batch_size")], None, "f/1"
    )
    expect_events(stubs, stream, [], "f/1", "f/1")
    poll(T0)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.status_message == "CUDA out of memory: lower batch_size"


def test_a_stop_ends_stopped_with_its_cost(owner, stubs):
    job = sagemaker_job(owner, status=JobStatus.STOPPING)
    expect_describe(stubs, job, "Stopped", "Stopped", BillableTimeInSeconds=120, TrainingTimeInSeconds=120)
    expect_streams(stubs, job)
    poll(T0)
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPED
    assert job.status_message == "Stopped; 120 billable seconds, $0.05"


def test_the_cost_cap_stop_says_so(owner, stubs):
    job = sagemaker_job(owner, max_cost_usd=Decimal("10.00"))
    expect_describe(
        stubs,
        job,
        "Stopped",
        "MaxRuntimeExceeded",
        BillableTimeInSeconds=25568,
        StoppingCondition={"MaxRuntimeInSeconds": 25568},
    )
    expect_streams(stubs, job)
    poll(T0)
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPED
    assert job.status_message.startswith(
        "Stopped by AWS when the job reached its $10.00 cost cap (7 h 06 min of run time); "
        "25568 billable seconds"
    )
    assert job.cost_usd == Decimal("9.9999")


def test_spot_savings_are_priced_against_the_training_time(owner, stubs):
    job = sagemaker_job(owner, use_spot=True)
    expect_describe(
        stubs, job, "Completed", "Completed", BillableTimeInSeconds=900, TrainingTimeInSeconds=3600
    )
    expect_streams(stubs, job)
    poll(T0)
    job.refresh_from_db()
    assert job.cost_usd == Decimal("0.3520")  # 900 s at $1.408/h
    assert job.spot_savings_usd == Decimal("1.0560")  # the other 2,700 s
    assert job.status_message == "Completed on SageMaker: 900 billable seconds, $0.35 (spot saved $1.06)"


def test_a_spot_interruption_keeps_the_job_training_with_a_message(owner, stubs):
    job = sagemaker_job(owner, status=JobStatus.TRAINING, use_spot=True)
    expect_describe(stubs, job, "InProgress", "Interrupted")
    expect_streams(stubs, job)
    poll(T0)
    job.refresh_from_db()
    assert job.status == JobStatus.TRAINING
    assert job.status_message.startswith("The spot instance was interrupted")


def test_uploading_moves_the_job_to_saving(owner, stubs):
    job = sagemaker_job(owner, status=JobStatus.TRAINING)
    expect_describe(stubs, job, "InProgress", "Uploading")
    expect_streams(stubs, job)
    poll(T0)
    job.refresh_from_db()
    assert job.status == JobStatus.UPLOADING


def test_a_job_seen_stopping_in_aws_is_stopping_here(owner, stubs):
    job = sagemaker_job(owner, status=JobStatus.TRAINING)
    expect_describe(stubs, job, "Stopping", "Stopping")
    expect_streams(stubs, job)
    poll(T0)
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPING


def stopping_job(owner, asked_ago: timedelta):
    """A job the user stopped `asked_ago` before T0, last described (still running) before that."""
    return sagemaker_job(
        owner,
        status=JobStatus.STOPPING,
        stop_requested_at=T0 - asked_ago,
        sagemaker_described_at=T0 - asked_ago - STOPPING_DESCRIBE_AFTER,
        sagemaker_secondary_status="Training",
    )


def expect_stop(stubs: Stubs, job):
    stubs.sagemaker.add_response("stop_training_job", {}, {"TrainingJobName": job.sagemaker_job_name})


def test_a_stop_that_never_reached_aws_is_sent_again(owner, stubs, caplog):
    # The broker was down when the user pressed Stop: the job is stopping here, still training in AWS.
    job = stopping_job(owner, asked_ago=timedelta(minutes=5))
    expect_describe(stubs, job, "InProgress", "Training")
    expect_stop(stubs, job)
    expect_streams(stubs, job)
    report = poll(T0)
    stubs.assert_done()
    job.refresh_from_db()

    assert report.calls["StopTrainingJob"] == 1
    assert job.status == JobStatus.STOPPING
    assert list(job.log_lines.values_list("text", flat=True))[-1] == (
        "SageMaker was still running the job after it was stopped; asked it again to stop"
    )
    assert f"job {job.pk}: SageMaker still says InProgress; sent StopTrainingJob again" in caplog.text


def test_a_lost_stop_is_sent_again_at_most_every_two_minutes(owner, stubs):
    job = stopping_job(owner, asked_ago=timedelta(minutes=5))
    expect_describe(stubs, job, "InProgress", "Training")
    expect_stop(stubs, job)
    expect_streams(stubs, job)
    poll(T0)
    # The next cycle: nothing changed in AWS, and the stop is not sent on every cycle.
    expect_list(stubs, T0 - WATERMARK_OVERLAP)
    expect_streams(stubs, job)
    report = poll(T0 + timedelta(seconds=30))
    stubs.assert_done()
    assert "StopTrainingJob" not in report.calls
    # Two minutes on, AWS still says InProgress: it is sent again.
    expect_list(stubs, T0 + timedelta(seconds=30) - WATERMARK_OVERLAP)
    expect_describe(stubs, job, "InProgress", "Training")
    expect_stop(stubs, job)
    expect_streams(stubs, job)
    report = poll(T0 + timedelta(minutes=2, seconds=30))
    stubs.assert_done()
    assert report.calls["StopTrainingJob"] == 1


def test_a_stop_just_asked_for_or_seen_by_aws_is_not_sent_again(owner, stubs):
    # Stubber fails the poll on a StopTrainingJob it was not told to expect.
    just_asked = stopping_job(owner, asked_ago=timedelta(seconds=20))
    expect_describe(stubs, just_asked, "InProgress", "Training")
    expect_streams(stubs, just_asked)
    report = poll(T0)
    stubs.assert_done()
    assert "StopTrainingJob" not in report.calls

    just_asked.delete()
    seen = stopping_job(owner, asked_ago=timedelta(minutes=5))
    expect_list(stubs, T0 - WATERMARK_OVERLAP)
    expect_describe(stubs, seen, "Stopping", "Stopping")
    expect_streams(stubs, seen)
    report = poll(T0 + timedelta(seconds=30))
    stubs.assert_done()
    assert "StopTrainingJob" not in report.calls


# --- rate limits and safety ---------------------------------------------------------------------------


def test_throttling_stops_that_kind_of_call_and_backs_off_for_the_next_cycles(owner, stubs):
    first, second = sagemaker_job(owner), sagemaker_job(owner, name="Second")
    stubs.sagemaker.add_client_error(
        "describe_training_job", service_error_code="ThrottlingException", service_message="Rate exceeded"
    )
    report = poll(T0)
    stubs.assert_done()  # the second job was not described in the same cycle
    assert report.throttled == {"describe"}
    assert report.calls == {"DescribeTrainingJob": 1}

    report = poll(T0 + timedelta(seconds=30))  # backing off: no call at all
    assert report.total_calls == 0

    cache.delete(BACKOFF_KEY.format("describe"))  # the back-off expired
    expect_describe(stubs, first, "InProgress", "Starting")
    expect_describe(stubs, second, "InProgress", "Starting")
    report = poll(T0 + timedelta(minutes=2))
    stubs.assert_done()
    assert report.calls == {"DescribeTrainingJob": 2}
    assert cache.get(BACKOFF_KEY.format("describe") + ":level") is None  # a clean cycle resets it


def test_a_throttled_log_read_does_not_stop_describes(owner, stubs):
    job = sagemaker_job(owner)
    expect_describe(stubs, job, "InProgress", "Training")
    stubs.logs.add_client_error("describe_log_streams", service_error_code="ThrottlingException")
    report = poll(T0)
    stubs.assert_done()
    job.refresh_from_db()
    assert report.throttled == {"logs"}
    assert job.status == JobStatus.TRAINING


def test_two_polls_never_run_at_once(owner, stubs):
    sagemaker_job(owner)
    cache.add(LOCK_KEY, "another worker", 60)
    report = poll(T0)
    assert report.skipped == "another poll is running"
    assert report.total_calls == 0


def test_no_active_job_means_no_aws_call(owner, stubs):
    sagemaker_job(owner, running=False)  # queued, not submitted
    assert poll(T0).total_calls == 0


def test_a_submission_whose_worker_died_is_settled(owner, stubs):
    lost = sagemaker_job(owner, running=False, status=JobStatus.PREPARING, started_at=T0 - timedelta(hours=1))
    stopping = sagemaker_job(
        owner, running=False, status=JobStatus.STOPPING, started_at=T0 - timedelta(hours=1), name="Stopping"
    )
    created = sagemaker_job(
        owner, running=False, status=JobStatus.PREPARING, started_at=T0 - timedelta(hours=1), name="Created"
    )
    for job in (lost, stopping):
        stubs.sagemaker.add_client_error(
            "describe_training_job",
            service_error_code="ValidationException",
            service_message="Requested resource not found.",
            expected_params={"TrainingJobName": sm.job_name(job)},
        )
    stubs.sagemaker.add_response(
        "describe_training_job",
        description(sm.job_name(created), "InProgress", "Training"),
        {"TrainingJobName": sm.job_name(created)},
    )
    poll(T0)
    stubs.assert_done()
    for job in (lost, stopping, created):
        job.refresh_from_db()
    assert lost.status == JobStatus.FAILED and "did not finish" in lost.status_message
    assert stopping.status == JobStatus.STOPPED
    assert created.status == JobStatus.TRAINING
    assert created.sagemaker_status == "InProgress"


# --- 1,000 running jobs -------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def many_jobs(owner, account: StubAccount, count: int) -> list[int]:
    jobs = [sagemaker_job(owner, name=f"Job {i}") for i in range(count)]
    for job in jobs:
        account.add_job(
            job.sagemaker_job_name,
            "Training",
            lines=[progress_line("progress", step=1, total_steps=10, loss=3.0)],
        )
    return [job.pk for job in jobs]


def run_cycle(clock: FakeClock, at: datetime) -> sm.PollReport:
    start = clock.now
    report = sm.poll_jobs(now=at, sleep=clock.sleep, clock=clock)
    report.seconds = clock.now - start
    return report


def assert_within_budget(report: sm.PollReport, budget: sm.PollBudget = sm.PollBudget()):
    assert report.calls["ListTrainingJobs"] <= budget.list_pages
    assert report.calls["DescribeTrainingJob"] <= budget.describes
    assert report.calls["DescribeLogStreams"] + report.calls["GetLogEvents"] <= budget.log_calls
    # Paced: each kind stays under its rate, and a cycle fits in the 30 s beat interval.
    assert report.calls["ListTrainingJobs"] <= 1 + report.seconds * budget.list_per_second
    assert report.calls["DescribeTrainingJob"] <= 1 + report.seconds * budget.describe_per_second
    assert report.seconds <= 30


def test_a_thousand_running_jobs_stay_within_the_call_budget_and_all_finish(owner, account):
    clock = FakeClock()
    ids = many_jobs(owner, account, 1000)
    at = T0
    cycles = []
    # Just submitted: every job must be described once; the budget spreads that over cycles.
    while TrainingJob.objects.filter(pk__in=ids, sagemaker_described_at=None).exists():
        at += timedelta(seconds=30)
        cycles.append(run_cycle(clock, at))
        assert_within_budget(cycles[-1])
        assert len(cycles) <= 20
    assert TrainingJob.objects.filter(pk__in=ids, status=JobStatus.TRAINING).count() == 1000

    # Steady state: nothing changes, so a cycle lists once and spends the rest on logs.
    account.calls.clear()
    at += timedelta(seconds=30)
    steady = run_cycle(clock, at)
    assert_within_budget(steady)
    assert steady.calls["ListTrainingJobs"] == 1
    assert steady.calls["DescribeTrainingJob"] == 0
    assert steady.total_calls == account.calls.total()
    assert steady.total_calls <= 101

    # All of them finish at once: each is described once and finished after its log is read.
    account.clock = at
    for job_id in ids:
        name = f"llmtuner-job-{job_id}-1"
        account.change(name, "Completed", "Completed", BillableTimeInSeconds=600, TrainingTimeInSeconds=600)
    account.calls.clear()
    finishing = 0
    while TrainingJob.objects.filter(pk__in=ids).exclude(status=JobStatus.COMPLETED).exists():
        at += timedelta(seconds=30)
        report = run_cycle(clock, at)
        assert_within_budget(report)
        finishing += 1
        assert finishing <= 40
    assert account.calls["DescribeTrainingJob"] == 1000  # once each, never more
    assert TrainingJob.objects.filter(pk__in=ids, cost_usd=Decimal("0.2347")).count() == 1000
