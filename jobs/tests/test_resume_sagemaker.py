"""Resume and Continue on SageMaker: the CreateTrainingJob request carries the chain's checkpoints
(CheckpointConfig, the same keys as in storage) and a continued job's `init_model` channel.

moto plays S3 and SageMaker; the request is the one botocore validated (see test_sagemaker_submit.py).
"""

# ruff: noqa: F811 (the fixtures imported from the other test modules are redefined as arguments)
from __future__ import annotations

import io
import json

import boto3
import pytest

from jobs import actions, checkpoints, resume
from jobs.backends import sagemaker as sm
from jobs.models import Backend, JobStatus, TrainingJob
from jobs.tests.conftest import make_job
from jobs.tests.test_sagemaker_submit import bucket_keys, channels, moto, requests_sent  # noqa: F401
from jobs.tests.test_sagemaker_support import (  # noqa: F401 (fixtures)
    BUCKET,
    REGION,
    fake_aws,
    instance,
    sagemaker_job,
    sagemaker_settings,
)
from llmtuner import storage

pytestmark = pytest.mark.django_db

STORAGE_BUCKET = "llmtuner-files"


@pytest.fixture
def s3_storage(moto, settings):
    """Storage on S3 in AWS: SageMaker reads and writes its keys directly."""
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=STORAGE_BUCKET)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {"bucket_name": STORAGE_BUCKET, "region_name": REGION, "location": "media"},
        },
    }
    assert storage.is_s3()


def stopped_with_a_checkpoint(job: TrainingJob, step: int) -> TrainingJob:
    prefix = f"{checkpoints.prefix(job)}checkpoint-{step}"
    storage.save(f"{prefix}/model.safetensors", io.BytesIO(b"weights"))
    storage.save(f"{prefix}/state.json", io.BytesIO(json.dumps({"step": step}).encode()))
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.STOPPED, step=step + 2, checkpoint_step=step
    )
    job.refresh_from_db()
    return job


def test_a_resumed_attempt_continues_from_a_checkpoint_a_local_attempt_made(owner, moto, requests_sent):
    """Local storage (SageMaker cannot reach it): the checkpoint is copied to the same keys in its bucket."""
    first = stopped_with_a_checkpoint(make_job(owner, name="Started here"), 25)
    TrainingJob.objects.filter(pk=first.pk).update(backend=Backend.LOCAL)
    new, made = resume.resume_job(first, Backend.SAGEMAKER, instance("ml.g5.xlarge"))
    assert made and new.backend == Backend.SAGEMAKER and new.resumed_at_step == 25

    sm.submit_job(new.pk)

    new.refresh_from_db()
    assert new.sagemaker_status == "InProgress", new.status_message
    [request] = requests_sent
    chain = f"users/{owner.pk}/jobs/{first.pk}/checkpoints/"
    assert request["TrainingJobName"] == f"llmtuner-job-{new.pk}-2"
    assert request["CheckpointConfig"] == {
        "S3Uri": f"s3://{BUCKET}/{chain}",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert bucket_keys(chain) == [
        f"{chain}checkpoint-25/model.safetensors",
        f"{chain}checkpoint-25/state.json",
    ]


def test_with_storage_on_s3_sagemaker_keeps_checkpoints_in_the_very_keys_the_local_backend_reads(
    owner, s3_storage, requests_sent
):
    first = stopped_with_a_checkpoint(sagemaker_job(owner, running=False), 40)
    new, made = actions.retry_job(first)
    assert made and new.resumed_at_step == 40

    sm.submit_job(new.pk)

    [request] = requests_sent
    chain = f"users/{owner.pk}/jobs/{first.pk}/checkpoints/"
    assert request["CheckpointConfig"]["S3Uri"] == f"s3://{STORAGE_BUCKET}/media/{chain}"
    assert request["CheckpointConfig"]["S3Uri"] == storage.s3_uri(chain)
    assert not bucket_keys(chain)  # nothing copied: SageMaker reads the stored one where it is
    # And back: a checkpoint SageMaker writes there is what a local attempt downloads.
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=STORAGE_BUCKET, Key=f"media/{chain}checkpoint-60/state.json", Body=b'{"step": 60}'
    )
    assert checkpoints.latest_step(new) == 60


def test_a_continued_job_gets_the_sagemaker_model_archive_as_its_init_model_channel(
    owner, moto, requests_sent
):
    uri = f"s3://{BUCKET}/users/{owner.pk}/jobs/1/llmtuner-job-1-1/output/model.tar.gz"
    source = sagemaker_job(owner, running=False, name="First")
    TrainingJob.objects.filter(pk=source.pk).update(status=JobStatus.COMPLETED, model_artifacts_uri=uri)
    job = sagemaker_job(owner, running=False, continued_from=source)

    sm.submit_job(job.pk)

    [request] = requests_sent
    assert channels(request)["init_model"] == uri  # the script extracts the archive itself
    assert {"train", "validation", "init_model"} <= set(channels(request))


def test_a_continued_local_model_is_copied_up_when_sagemaker_cannot_reach_storage(owner, moto, requests_sent):
    source = make_job(owner, name="Trained here")
    model = f"{source.storage_prefix()}/model"
    storage.save(f"{model}/config.json", io.BytesIO(b"{}"))
    storage.save(f"{model}/model.safetensors", io.BytesIO(b"weights"))
    TrainingJob.objects.filter(pk=source.pk).update(status=JobStatus.COMPLETED, model_prefix=model)
    job = sagemaker_job(owner, running=False, continued_from=source)

    sm.submit_job(job.pk)

    [request] = requests_sent
    target = f"users/{owner.pk}/jobs/{job.pk}/init_model/"
    assert channels(request)["init_model"] == f"s3://{BUCKET}/{target}"
    assert bucket_keys(target) == [f"{target}config.json", f"{target}model.safetensors"]


def test_a_continued_local_model_is_read_where_it_is_stored_on_s3(owner, s3_storage, requests_sent):
    source = make_job(owner, name="Trained here")
    model = f"{source.storage_prefix()}/model"
    storage.save(f"{model}/config.json", io.BytesIO(b"{}"))
    TrainingJob.objects.filter(pk=source.pk).update(status=JobStatus.COMPLETED, model_prefix=model)
    job = sagemaker_job(owner, running=False, continued_from=source)

    sm.submit_job(job.pk)

    [request] = requests_sent
    assert channels(request)["init_model"] == f"s3://{STORAGE_BUCKET}/media/{model}/"


def test_a_continued_job_whose_model_is_gone_fails_before_reaching_sagemaker(owner, moto, requests_sent):
    source = make_job(owner, name="Trained here")
    TrainingJob.objects.filter(pk=source.pk).update(status=JobStatus.FAILED)
    job = sagemaker_job(owner, running=False, continued_from=source)

    sm.submit_job(job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.status_message.startswith("The tuned model it continues from is not there:")
    assert requests_sent == []
