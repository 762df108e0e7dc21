# ruff: noqa: F811 (the fixtures imported from test_sagemaker_support are redefined as arguments)
"""SageMaker jobs teach estimates too: phases from their logs, training and billable time from AWS."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from jobs import history
from jobs.backends.sagemaker.poll import WATERMARK_OVERLAP
from jobs.models import JobStatus, RunRecord, TrainingJob
from jobs.tests.test_sagemaker_poll import (
    T0,
    expect_describe,
    expect_events,
    expect_list,
    expect_streams,
    poll,
    summary,
)
from jobs.tests.test_sagemaker_support import (  # noqa: F401 (fixtures)
    fake_aws,
    progress_line,
    sagemaker_job,
    sagemaker_settings,
    stubs,
)

pytestmark = pytest.mark.django_db

SCRIPT_PHASES = {
    "preparing_data": 20.0,
    "loading_model": 40.0,
    "training": 300.0,
    "evaluating": 30.0,
    "saving": 10.0,
    "generating_samples": 20.0,
}


def test_a_completed_sagemaker_job_records_its_phases_and_billing_and_prices_the_next_estimate(
    owner, stubs, django_capture_on_commit_callbacks
):
    job = sagemaker_job(owner)
    TrainingJob.objects.filter(pk=job.pk).update(
        started_at=timezone.now() - timedelta(seconds=1000),
        phase="starting",
        phase_timeline={"starting": 0.0},
    )
    stream = f"{job.sagemaker_job_name}/algo-1-1700000000"
    expect_describe(stubs, job, "InProgress", "Training", now=T0)
    expect_streams(stubs, job, stream)
    phase_lines = [progress_line("phase", phase=p) for p in ("preparing_data", "loading_model", "training")]
    start = progress_line("start", total_steps=30, world_size=1, max_seq_length=64, method="full")
    expect_events(stubs, stream, [*phase_lines, start], None, "f/4")
    with django_capture_on_commit_callbacks(execute=True):
        poll(T0 + timedelta(seconds=30))
    job.refresh_from_db()
    assert (job.status, job.phase) == (JobStatus.TRAINING, "training")

    expect_list(
        stubs,
        T0 + timedelta(seconds=30) - WATERMARK_OVERLAP,
        summary(job, "Completed", "Completed", T0 + timedelta(minutes=20)),
    )
    expect_describe(
        stubs,
        job,
        "Completed",
        "Completed",
        now=T0 + timedelta(minutes=20),
        BillableTimeInSeconds=400,
        TrainingTimeInSeconds=600,
        TrainingEndTime=T0 + timedelta(minutes=10),
        ModelArtifacts={"S3ModelArtifacts": "s3://bucket/users/1/jobs/1/x/output/model.tar.gz"},
    )
    end = [progress_line("phase", phase=p) for p in ("evaluating", "saving", "generating_samples")]
    done = progress_line("done", step=30, total_steps=30, train_tokens=30_000, phase_seconds=SCRIPT_PHASES)
    expect_events(stubs, stream, [*end, done], "f/4", "f/8")
    expect_events(stubs, stream, [], "f/8", "f/8")
    with django_capture_on_commit_callbacks(execute=True):
        poll(T0 + timedelta(minutes=21))
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED

    saved = RunRecord.objects.get(job=job)
    assert (saved.backend, saved.instance_type) == ("sagemaker", "ml.g5.xlarge")
    assert (saved.billable_seconds, saved.sagemaker_training_seconds) == (400, 600)
    assert {p: saved.phase_seconds[p] for p in SCRIPT_PHASES} == SCRIPT_PHASES
    # What the script's phases leave of the whole run is the instance's start-up.
    assert saved.phase_seconds["starting"] == pytest.approx(
        saved.total_seconds - sum(SCRIPT_PHASES.values()), abs=1
    )
    assert saved.total_seconds == pytest.approx(1000, abs=5)

    later = history.estimate_for(
        job.dataset, job.base_model, job.hyperparameters, "sagemaker", job.instance_type
    )
    assert later.basis == "from 1 similar run"
    assert later.phases["training"] == pytest.approx(300, abs=1)  # the same job: what its training took
    # Billed: 400 of its 1,000 seconds.
    price = Decimal(str(job.instance_type.price_per_hour_usd))
    billed = Decimal(round(later.seconds * 400 / saved.total_seconds + 0.5))
    assert later.cost_usd == pytest.approx(billed / 3600 * price, abs=Decimal("0.001"))
