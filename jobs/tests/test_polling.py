"""The progress card's own query (jobs/polling.py) reads a job as the ORM would."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from jobs import polling
from jobs.models import InstanceType, JobStatus, TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def instance():
    return InstanceType.objects.create(
        name="ml.test.xlarge", vcpus=4, memory_gib=16, price_per_hour_usd="3.6125", price_date="2025-01-01"
    )


def fill(job: TrainingJob, **fields) -> TrainingJob:
    now = timezone.now().replace(microsecond=123456)
    values = {
        "status": JobStatus.TRAINING,
        "status_message": "Training: step 7 of 20 «ünïcödé»",
        "step": 7,
        "total_steps": 20,
        "epoch": 0.35,
        "loss": 2.345678,
        "eval_loss": None,
        "tokens_per_second": 1234.5,
        "eta_seconds": 65,
        "cost_usd": Decimal("0.4321"),
        "instance_count": 2,
        "estimated_seconds": 300,
        "started_at": now - timedelta(minutes=3),
        "training_started_at": now - timedelta(minutes=2),
        "heartbeat_at": now,
        **fields,
    }
    TrainingJob.objects.filter(pk=job.pk).update(**values)
    return TrainingJob.objects.select_related("instance_type").get(pk=job.pk)


@pytest.mark.parametrize("on_sagemaker", [False, True])
def test_every_field_the_card_reads_equals_what_the_orm_reads(owner, job, instance, on_sagemaker):
    expected = fill(
        job,
        backend="sagemaker" if on_sagemaker else "local",
        instance_type=instance if on_sagemaker else None,
    )

    read = polling.progress_job(owner.pk, job.pk)

    for name in polling.JOB_FIELDS:
        attname = TrainingJob._meta.get_field(name).attname
        assert getattr(read, attname) == getattr(expected, attname), name
        assert type(getattr(read, attname)) is type(getattr(expected, attname)), name
    assert read.started_at.tzinfo is not None
    if on_sagemaker:
        assert read.instance_type.pk == instance.pk
        assert read.instance_type.price_per_hour_usd == Decimal("3.6125")
    else:
        assert read.instance_type_id is None


def test_a_finished_job_reads_its_end(owner, job):
    expected = fill(job, status=JobStatus.COMPLETED, finished_at=timezone.now(), eval_loss=1.5)

    read = polling.progress_job(owner.pk, job.pk)

    assert (read.status, read.finished_at, read.eval_loss) == (JobStatus.COMPLETED, expected.finished_at, 1.5)
    assert read.is_final


def test_someone_elses_job_or_a_missing_one_reads_as_nothing(owner, outsider, job):
    assert polling.progress_job(outsider.pk, job.pk) is None
    assert polling.progress_job(owner.pk, job.pk + 1000) is None


def test_what_the_card_does_not_read_still_loads_when_asked(owner, job, django_assert_num_queries):
    expected = TrainingJob.objects.get(pk=job.pk).hyperparameters
    read = polling.progress_job(owner.pk, job.pk)

    assert "hyperparameters" in read.get_deferred_fields()
    with django_assert_num_queries(1):
        assert read.hyperparameters == expected


def test_on_postgresql_the_card_query_is_planned_once_per_connection(owner, job):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("SQLite keeps its own statement cache")
    for _ in range(3):
        assert polling.progress_job(owner.pk, job.pk).pk == job.pk

    with connection.cursor() as cursor:
        cursor.execute("SELECT generic_plans + custom_plans FROM pg_prepared_statements")
        assert cursor.fetchall() == [(3,)]
