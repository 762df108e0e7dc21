from __future__ import annotations

import io
import json
import tarfile

import boto3
import pytest
from django.utils import timezone
from moto import mock_aws

from datasets_app.models import Dataset
from jobs.models import Backend, BaseModel, JobStatus, TrainingJob
from llmtuner import storage

REPETITIVE_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "A stitch in time saves nine.",
    "All that glitters is not gold.",
]


def make_ready_dataset(owner, samples: list[dict] | None = None, name: str = "Proverbs") -> Dataset:
    samples = samples or [{"text": REPETITIVE_TEXT[i % 3]} for i in range(60)]
    dataset = Dataset.objects.create(owner=owner, name=name, original_filename="proverbs.jsonl")
    train = "".join(json.dumps(sample) + "\n" for sample in samples)
    validation = "".join(json.dumps(sample) + "\n" for sample in samples[:6])
    train_key = storage.save(f"{dataset.storage_prefix}train.jsonl", io.BytesIO(train.encode()))
    validation_key = storage.save(
        f"{dataset.storage_prefix}validation.jsonl", io.BytesIO(validation.encode())
    )
    Dataset.objects.filter(pk=dataset.pk).update(
        status=Dataset.Status.READY,
        train_file=train_key,
        validation_file=validation_key,
        stats={"samples": len(samples), "tokens": len(train) // 4, "shape": "text"},
    )
    dataset.refresh_from_db()
    return dataset


TINY_HYPERPARAMETERS = {
    "base_model": "scratch:tiny-gpt2",
    "method": "full",
    "epochs": 1,
    "max_steps": 30,
    "learning_rate": 0.003,
    "batch_size": 4,
    "max_seq_length": 64,
}


def make_job(owner, dataset=None, **fields) -> TrainingJob:
    dataset = dataset or make_ready_dataset(owner)
    base_model = scratch_base_model()
    defaults = {
        "name": "Tiny proverbs",
        "base_model": base_model,
        "hyperparameters": dict(TINY_HYPERPARAMETERS),
    }
    return TrainingJob.objects.create(owner=owner, dataset=dataset, **{**defaults, **fields})


def scratch_base_model() -> BaseModel:
    # Transactional tests flush the catalogue that the data migration seeded.
    base_model, _ = BaseModel.objects.get_or_create(
        hub_id="scratch:tiny-gpt2",
        defaults={
            "name": "Tiny GPT-2 (from scratch)",
            "family": "GPT-2",
            "parameters": 1_700_000,
            "context_length": 256,
            "licence": "MIT",
        },
    )
    return base_model


@pytest.fixture
def job_factory(owner):
    dataset = make_ready_dataset(owner)
    return lambda **fields: make_job(owner, dataset, **fields)


@pytest.fixture
def job(job_factory):
    return job_factory()


@pytest.fixture
def other_job(job_factory):
    return job_factory(name="Another")


# --- Completed jobs and their stored models ---

OUTPUT_BUCKET = "sagemaker-output"


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


@pytest.fixture
def sagemaker_output(fake_aws_credentials):
    """An S3 (moto) with the bucket SageMaker writes model.tar.gz archives to."""
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=OUTPUT_BUCKET)
        yield client


def completed(job: TrainingJob, **fields) -> TrainingJob:
    defaults = {"model_prefix": f"{job.storage_prefix()}/model"}
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.COMPLETED, finished_at=timezone.now(), **{**defaults, **fields}
    )
    job.refresh_from_db()
    return job


def sagemaker_job(
    owner, client, archive: bytes | None, key: str = "tiny-1/output/model.tar.gz"
) -> TrainingJob:
    """A completed SageMaker job whose model.tar.gz (if given) is in the output bucket."""
    if archive is not None:
        client.put_object(Bucket=OUTPUT_BUCKET, Key=key, Body=archive)
    return completed(
        make_job(owner, backend=Backend.SAGEMAKER),
        model_prefix="",
        model_artifacts_uri=f"s3://{OUTPUT_BUCKET}/{key}",
    )
