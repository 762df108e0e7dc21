"""Stopping (Celery task `stop_job`): StopTrainingJob; the poller moves the job on to stopped."""

from __future__ import annotations

import logging

from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

from jobs import lifecycle
from jobs.backends.sagemaker.clients import aws
from jobs.backends.sagemaker.config import load_job
from jobs.backends.sagemaker.errors import (
    CONNECTION_ERRORS,
    NO_CREDENTIALS,
    TRANSIENT_CODES,
    TransientAWSError,
    error_code,
    error_message,
    explain_client_error,
    is_not_found,
)
from jobs.models import Backend, JobStatus, TrainingJob

logger = logging.getLogger(__name__)

S = JobStatus


def stop_job(job_id: int, *, force: bool = False) -> None:
    """Ask SageMaker to stop the job; the poller moves it on to stopped. Raises TransientAWSError."""
    job = load_job(job_id)
    if job is None or job.backend != Backend.SAGEMAKER:
        return
    if not force and job.status != S.STOPPING:
        return
    if not job.sagemaker_status:
        # Not created (yet): submit_job stops it once it exists, or never creates it.
        return
    try:
        aws().sagemaker.stop_training_job(TrainingJobName=job.sagemaker_job_name)
    except ClientError as error:
        code = error_code(error)
        if code in TRANSIENT_CODES:
            raise TransientAWSError(code, error_message(error)) from error
        stop_refused(job, error)
        return
    except (NoCredentialsError, PartialCredentialsError):
        lifecycle.append_log(job_id, [f"Could not stop the job: {NO_CREDENTIALS}"])
        return
    except CONNECTION_ERRORS as error:
        raise TransientAWSError(type(error).__name__, str(error)) from error
    lifecycle.append_log(job_id, ["Asked SageMaker to stop the job"])


def stop_refused(job: TrainingJob, error: ClientError) -> None:
    """What a permanent refusal of StopTrainingJob means for the job."""
    if is_not_found(error):
        lifecycle.transition(job.pk, S.STOPPED, "Stopped (SageMaker has no such training job)")
    elif error_code(error) == "ValidationException":
        logger.info("job %s: nothing to stop (%s)", job.pk, error_message(error))  # it already ended
    else:
        lifecycle.append_log(job.pk, [f"Could not stop the job: {explain_client_error(error, job)}"])


def give_up_stop(job_id: int, error: TransientAWSError) -> None:
    lifecycle.append_log(
        job_id,
        [f"AWS kept answering {error.code} to StopTrainingJob; the job may still be running. Stop it again."],
    )
