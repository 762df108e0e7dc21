"""AWS errors: which are transient (the task retries), and what a permanent one tells a user to do."""

from __future__ import annotations

import random
import re

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from django.conf import settings

from jobs.backends.sagemaker.clients import aws
from jobs.backends.sagemaker.config import bucket_name
from jobs.backends.sagemaker.quotas import suggest_instance_type
from jobs.models import TrainingJob

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "SlowDown",
    }
)
TRANSIENT_CODES = THROTTLING_CODES | {
    "InternalFailure",
    "InternalServerError",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
}
CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AuthFailure",
    }
)
ACCESS_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "403", "Forbidden"})
CONNECTION_ERRORS = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)

NO_CREDENTIALS = (
    "No AWS credentials were found for the worker. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(or AWS_PROFILE), or give the worker's machine an IAM role, then run `python manage.py check_sagemaker`."
)


class SageMakerError(Exception):
    """A failure the user must act on; its message is shown on the job."""


class TransientAWSError(Exception):
    """A named transient error (throttling, a 5xx, a dropped connection): the task retries."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", "")).strip()


def is_not_found(error: ClientError) -> bool:
    code = error_code(error)
    return code in ("ResourceNotFound", "ResourceNotFoundException", "NoSuchKey", "404") or (
        code == "ValidationException" and "not found" in error_message(error).lower()
    )


def retry_delay(retries: int) -> float:
    """Exponential backoff with full jitter, for the task's retries of transient errors."""
    return random.uniform(1.0, min(300.0, 10.0 * 2**retries))


def explain_client_error(error: ClientError, job: TrainingJob | None = None) -> str:
    """A message a user can act on, for a permanent AWS error."""
    code, message = error_code(error), error_message(error)
    operation = getattr(error, "operation_name", "") or ""
    if code == "ResourceLimitExceeded":
        return _explain_quota(message, job)
    if code in ACCESS_DENIED_CODES or "AccessDenied" in code:
        return _explain_access_denied(message, operation)
    if code in CREDENTIAL_CODES:
        return (
            f"AWS rejected the worker's credentials ({code}): they are wrong or have expired. "
            "Renew them, then run `python manage.py check_sagemaker`."
        )
    if code == "ValidationException":
        return _explain_validation(message)
    return f"SageMaker refused the job ({code or 'error'}): {message}"


def _explain_quota(message: str, job: TrainingJob | None) -> str:
    instance = job.instance_type.name if job and job.instance_type else "the instance type"
    spot = bool(job and job.use_spot)
    match = re.search(r"'([^']+)'", message)
    quota = match.group(1) if match else f"{instance} for {'spot ' if spot else ''}training job usage"
    text = (
        f"Your AWS account's quota “{quota}” does not allow this job on {instance}. "
        f"Ask for more in the AWS console: Service Quotas → AWS services → Amazon SageMaker → “{quota}” → "
        f"Request increase at account level (region {aws().region})."
    )
    suggestion = suggest_instance_type(job) if job else None
    if suggestion:
        text += f" Meanwhile {suggestion} has quota: clone this job and choose it."
    return f"{text} AWS said: {message}"


def _explain_access_denied(message: str, operation: str) -> str:
    match = re.search(r"perform: ([\w-]+:[\w*-]+)", message)
    action = match.group(1) if match else ""
    role = settings.SAGEMAKER_ROLE_ARN
    if action == "iam:PassRole":
        need = f"iam:PassRole on the role {role} (for the service sagemaker.amazonaws.com)"
    elif action.startswith("sagemaker:") or operation.endswith("TrainingJob"):
        need = action or "sagemaker:CreateTrainingJob"
    elif action.startswith("s3:") or operation in ("PutObject", "GetObject", "HeadBucket", "ListBuckets"):
        need = (
            f"{action or 's3 access'} on the bucket {bucket_name()} (the worker needs s3:PutObject, "
            "s3:GetObject, s3:ListBucket and s3:ListAllMyBuckets; the role needs s3:GetObject, s3:PutObject "
            "and s3:ListBucket)"
        )
    else:
        need = action or (
            f"sagemaker:CreateTrainingJob, iam:PassRole on {role} and S3 access to the bucket {bucket_name()}"
        )
    return f"AWS denied the worker {need}. Add it to the worker's IAM policy. AWS said: {message}"


def _explain_validation(message: str) -> str:
    if "assume" in message.lower() and "role" in message.lower():
        return (
            f"SageMaker could not assume the role {settings.SAGEMAKER_ROLE_ARN}: its trust policy must allow "
            f"sagemaker.amazonaws.com. AWS said: {message}"
        )
    match = re.search(r"at '([^']+)'", message) or re.search(r"\b([A-Z][A-Za-z]+(?:\.[A-Za-z]+)+)\b", message)
    where = f" in {match.group(1)}" if match else ""
    return f"SageMaker rejected the job's settings{where}: {message}"
