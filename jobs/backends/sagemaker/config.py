"""Settings and names: whether SageMaker is configured, its bucket, and what a job is called there."""

from __future__ import annotations

import re

from django.conf import settings

from jobs.models import TrainingJob

JOB_NAME_PREFIX = "llmtuner-job-"
JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")

AWS_ACTIVE = ("InProgress", "Stopping")
AWS_FINAL = ("Completed", "Failed", "Stopped")


def bucket_name() -> str:
    return settings.SAGEMAKER_BUCKET or settings.AWS_STORAGE_BUCKET_NAME


def is_configured() -> bool:
    """Whether the launch form may offer SageMaker (settings only: no AWS call)."""
    return bool(settings.SAGEMAKER_ROLE_ARN and bucket_name())


def unavailable_reason() -> str:
    """How to enable SageMaker; empty when it is configured."""
    missing = []
    if not settings.SAGEMAKER_ROLE_ARN:
        missing.append("SAGEMAKER_ROLE_ARN (an IAM role SageMaker may assume)")
    if not bucket_name():
        missing.append("SAGEMAKER_BUCKET or AWS_STORAGE_BUCKET_NAME (an S3 bucket for the jobs' files)")
    if not missing:
        return ""
    return (
        f"not configured: set {' and '.join(missing)}, give the worker AWS credentials, "
        "then run `python manage.py check_sagemaker`"
    )


def job_name(job: TrainingJob) -> str:
    """`llmtuner-job-<id>-<attempt>`: the same on every retry of one attempt."""
    name = f"{JOB_NAME_PREFIX}{job.pk}-{job.attempt}"
    if not JOB_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a valid SageMaker training job name")
    return name


def job_prefix(job: TrainingJob) -> str:
    return f"users/{job.owner_id}/jobs/{job.pk}"


def load_job(job_id: int) -> TrainingJob | None:
    return (
        TrainingJob.objects.select_related("owner", "dataset", "base_model", "instance_type")
        .filter(pk=job_id)
        .first()
    )
