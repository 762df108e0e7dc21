"""AWS SageMaker backend: the only module that talks to SageMaker, CloudWatch Logs, IAM and Service Quotas.

- Submission (Celery task on the `default` queue, `submit_job`): the job's
  prepared data become S3 channels, `training_scripts/` becomes the job's source
  code, and `sagemaker.train.ModelTrainer` creates the training job without
  waiting. The job name is fixed by the job's id and attempt, so a retried
  submission that meets `ResourceInUse` adopts the job that exists instead of
  making a second one. The job's cost cap becomes MaxRuntimeInSeconds, so AWS
  itself stops a job that has spent it.
- Polling (Celery beat, `poll_jobs`): one `ListTrainingJobs` (paged) finds what
  changed since the last poll, `DescribeTrainingJob` runs only for those, for
  jobs never described and, slowly, for the rest as a safety net; each job's
  CloudWatch log streams are read on from their stored forward tokens and fed,
  line by line, to the same lifecycle functions the local backend uses. Every
  kind of call has a per-cycle budget and a pace, and a throttled kind backs off
  for the next cycles, so 1,000 running jobs stay well inside AWS's rate limits.
- Stop (`stop_job`): StopTrainingJob; the poller moves the job on to stopped.

The web process only calls `is_configured` and `unavailable_reason`, which read
settings: nothing here runs inside a request.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from django.conf import settings
from django.core.cache import cache
from django.core.files.storage import storages
from django.db.models import Q
from django.utils import timezone

from jobs import lifecycle, pricing
from jobs.models import Backend, InstanceType, JobStatus, TrainingJob
from llmtuner import storage
from training_scripts import progress
from training_scripts.hyperparameters import (
    format_errors,
    is_scratch_model,
    to_sagemaker_hyperparameters,
    validate_hyperparameters,
)

logger = logging.getLogger(__name__)

S = JobStatus
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
JOB_NAME_PREFIX = "llmtuner-job-"
JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
SOURCE_DIR = Path(settings.BASE_DIR) / "training_scripts"
ENTRY_SCRIPT = "finetune.py"
REQUIREMENTS = "requirements.txt"
SOURCE_IGNORE = [".env", ".git", "__pycache__", "*.pyc", ".DS_Store", ".cache", "tests", "README.md"]
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
# Training images (sagemaker/core/image_uri_config): the Hugging Face one on GPUs,
# plain PyTorch on CPUs. Both install training_scripts/requirements.txt (peft is
# not in every image; pip leaves what is already satisfied alone).
HF_TRANSFORMERS_VERSION = "5.3.0"
HF_BASE_FRAMEWORK = "pytorch2.9.0"
PYTORCH_VERSION = "2.9.0"
PYTORCH_PY_VERSION = "py312"
# The SDK's own settings: no usage telemetry sent from our workers.
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}

AWS_ACTIVE = ("InProgress", "Stopping")
AWS_FINAL = ("Completed", "Failed", "Stopped")
# Secondary statuses in which the training container may be writing logs.
LOGGING_SECONDARY = frozenset(
    {"Training", "Uploading", "Stopping", "Interrupted", "Restarting", "Updating", "MaxRuntimeExceeded"}
)

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
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=10, read_timeout=60)
NO_CREDENTIALS = (
    "No AWS credentials were found for the worker. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(or AWS_PROFILE), or give the worker's machine an IAM role, then run `python manage.py check_sagemaker`."
)


# --- configuration -------------------------------------------------------------------------


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


# --- AWS clients -----------------------------------------------------------------------------


class AWS:
    """The clients of one boto3 session (the standard credential chain, AWS_REGION)."""

    def __init__(self, session: boto3.session.Session | None = None) -> None:
        self.session = session or boto3.session.Session(region_name=settings.AWS_REGION)
        self._clients: dict[str, Any] = {}

    @property
    def region(self) -> str:
        return self.session.region_name or settings.AWS_REGION

    def client(self, service: str):
        if service not in self._clients:
            self._clients[service] = self.session.client(
                service, region_name=self.region, config=CLIENT_CONFIG
            )
        return self._clients[service]

    @property
    def sagemaker(self):
        return self.client("sagemaker")

    @property
    def logs(self):
        return self.client("logs")

    @property
    def s3(self):
        return self.client("s3")


_aws: AWS | None = None


def aws() -> AWS:
    """This process's clients, made on first use (after the worker has forked)."""
    global _aws
    if _aws is None:
        _aws = AWS()
    return _aws


# --- errors ------------------------------------------------------------------------------------


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


# --- names ---------------------------------------------------------------------------------------


def job_name(job: TrainingJob) -> str:
    """`llmtuner-job-<id>-<attempt>`: the same on every retry of one attempt."""
    name = f"{JOB_NAME_PREFIX}{job.pk}-{job.attempt}"
    if not JOB_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a valid SageMaker training job name")
    return name


def job_prefix(job: TrainingJob) -> str:
    return f"users/{job.owner_id}/jobs/{job.pk}"


# --- submission ---------------------------------------------------------------------------------


@dataclass
class Submission:
    """Everything one CreateTrainingJob needs, decided before any AWS call."""

    job_name: str
    role_arn: str
    bucket: str
    image_uri: str
    instance_type: str
    instance_count: int
    volume_size_gb: int
    hyperparameters: dict[str, str]
    channels: dict[str, str]
    output_uri: str
    code_prefix: str
    max_runtime_seconds: int
    use_spot: bool = False
    max_wait_seconds: int | None = None
    checkpoint_uri: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # Never printed: it may hold HF_TOKEN.
    environment: dict[str, str] = field(default_factory=dict, repr=False)


def training_image(instance_type: InstanceType, region: str) -> str:
    from sagemaker.core import image_uris

    if instance_type.has_gpu:
        return image_uris.retrieve(
            "huggingface",
            region=region,
            version=HF_TRANSFORMERS_VERSION,
            base_framework_version=HF_BASE_FRAMEWORK,
            instance_type=instance_type.name,
            image_scope="training",
        )
    return image_uris.retrieve(
        "pytorch",
        region=region,
        version=PYTORCH_VERSION,
        py_version=PYTORCH_PY_VERSION,
        instance_type=instance_type.name,
        image_scope="training",
    )


def volume_size_gb(parameters: int) -> int:
    # The model, its optimizer-free checkpoints (two kept) and the saved model, in fp32 at worst.
    return max(30, 20 + math.ceil(parameters / 1e9 * 12))


def runtime_limit(job: TrainingJob, instance_type: InstanceType) -> int:
    """MaxRuntimeInSeconds from the job's cost cap, or from the owner's budget left when it has none."""
    count = max(1, job.instance_count)
    if job.max_cost_usd is not None:
        cap, what = Decimal(job.max_cost_usd), f"The job's cost cap of ${job.max_cost_usd:.2f}"
    else:
        cap = pricing.remaining_budget(job.owner, exclude_job_id=job.pk)
        what = f"What is left of your monthly budget (${max(cap, Decimal(0)):.2f})"
        if cap <= 0:
            raise SageMakerError(
                "Your monthly budget is spent, so this job could not start. "
                "Ask an operator to raise it, or wait for next month."
            )
    ceiling = settings.MAX_JOB_RUNTIME_SECONDS
    seconds = pricing.max_runtime_seconds(cap, instance_type, count, ceiling)
    if seconds < pricing.MIN_RUNTIME_SECONDS:
        needed = pricing.cap_for_seconds(pricing.MIN_RUNTIME_SECONDS, instance_type, count)
        raise SageMakerError(
            f"{what} buys only {seconds} s on {count} × {instance_type.name} "
            f"(${instance_type.price_per_hour_usd}/h each); a job needs at least "
            f"{pricing.MIN_RUNTIME_SECONDS // 60} minutes, so allow at least ${needed}."
        )
    return seconds


def build_submission(job: TrainingJob, channels: dict[str, str], region: str) -> Submission:
    """The request for `job` (pure: settings, the catalogue and the job). Raises SageMakerError."""
    instance_type = job.instance_type
    if instance_type is None:
        raise SageMakerError("Choose an instance type to train on SageMaker.")
    if not instance_type.is_active:
        raise SageMakerError(f"{instance_type.name} is no longer offered; clone the job and pick another.")
    clean, errors = validate_hyperparameters(job.hyperparameters)
    if errors:
        raise SageMakerError(format_errors(errors))
    bucket = bucket_name()
    prefix = job_prefix(job)
    environment = {}
    token = os.environ.get("HF_TOKEN", "").strip()
    if token and not is_scratch_model(clean.get("base_model", "")):
        environment["HF_TOKEN"] = token  # an environment variable of the job, never a hyperparameter
    max_runtime = runtime_limit(job, instance_type)
    return Submission(
        job_name=job_name(job),
        role_arn=settings.SAGEMAKER_ROLE_ARN,
        bucket=bucket,
        image_uri=training_image(instance_type, region),
        instance_type=instance_type.name,
        instance_count=max(1, job.instance_count),
        volume_size_gb=volume_size_gb(job.base_model.parameters),
        hyperparameters=to_sagemaker_hyperparameters(clean),
        channels=channels,
        output_uri=f"s3://{bucket}/{prefix}/",
        code_prefix=f"{prefix}/source",
        max_runtime_seconds=max_runtime,
        use_spot=job.use_spot,
        # Spot capacity may take a while: wait as long again as the job may run.
        max_wait_seconds=min(2 * max_runtime, pricing.SAGEMAKER_MAX_RUNTIME_SECONDS)
        if job.use_spot
        else None,
        checkpoint_uri=f"s3://{bucket}/{prefix}/checkpoints/" if job.use_spot else None,
        tags={"llmtuner:owner": str(job.owner_id), "llmtuner:job": str(job.pk)},
        environment=environment,
    )


def data_channels(job: TrainingJob) -> dict[str, str]:
    """S3 URIs of the prepared data: the datasets bucket's own keys, or copies uploaded for SageMaker."""
    dataset = job.dataset
    if dataset is None:
        raise SageMakerError("The job's dataset was deleted.")
    if not dataset.is_ready or not dataset.train_file:
        raise SageMakerError(f"The dataset is {dataset.get_status_display().lower()}, not ready.")
    keys = {"train": dataset.train_file}
    if dataset.validation_file:
        keys["validation"] = dataset.validation_file
    default = storages["default"]
    if storage.is_s3(default) and not settings.AWS_S3_ENDPOINT_URL:
        # The datasets bucket is in AWS: SageMaker reads it directly (the role needs s3:GetObject there).
        names = {channel: default._normalize_name(key) for channel, key in keys.items()}
        return {channel: f"s3://{default.bucket_name}/{name}" for channel, name in names.items()}
    channels = {}
    for channel, key in keys.items():
        target = f"{job_prefix(job)}/data/{channel}/{channel}.jsonl"
        with storage.open_stream(key) as stream:
            aws().s3.upload_fileobj(stream, bucket_name(), target)
        channels[channel] = f"s3://{bucket_name()}/{target}"
    return channels


@functools.cache
def _named_trainer_class():
    from sagemaker.train import ModelTrainer

    class NamedModelTrainer(ModelTrainer):
        """A ModelTrainer whose job name is ours, not the SDK's base name + timestamp.

        A deterministic name is what lets a retried submission find, rather than
        duplicate, a job that an earlier try created.
        """

        training_job_name: str

        def _create_training_job_args(self, *args, **kwargs):
            request = super()._create_training_job_args(*args, **kwargs)
            request["training_job_name"] = self.training_job_name
            return request

    return NamedModelTrainer


@contextlib.contextmanager
def _quiet_sdk_debug_logs() -> Iterator[None]:
    # At DEBUG the SDK and botocore print whole requests, the job's environment
    # (HF_TOKEN) included; never let them while a job is created.
    families = ("sagemaker", "botocore", "boto3", "urllib3")
    names = [name for name in logging.Logger.manager.loggerDict if name.split(".")[0] in families]
    loggers = [logging.getLogger(name) for name in {*families, *names}]
    levels = [one.level for one in loggers]
    for one in loggers:
        one.setLevel(max(logging.INFO, one.getEffectiveLevel()))
    try:
        yield
    finally:
        for one, level in zip(loggers, levels, strict=True):
            one.setLevel(level)


def launch(submission: Submission, session: boto3.session.Session) -> None:
    """Create the training job with sagemaker.train.ModelTrainer, without waiting for it."""
    # The SDK simulates the role's IAM policies on every ModelTrainer; check_sagemaker
    # checks the role once instead, and CreateTrainingJob reports what is missing.
    os.environ.setdefault("SAGEMAKER_VALIDATE_ROLE", "false")
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.training.configs import (
        CheckpointConfig,
        Compute,
        InputData,
        MetricDefinition,
        OutputDataConfig,
        SourceCode,
        StoppingCondition,
        Tag,
    )

    sdk_session = Session(boto_session=session, default_bucket=submission.bucket, sagemaker_config=SDK_CONFIG)
    trainer = _named_trainer_class()(
        training_job_name=submission.job_name,
        base_job_name=submission.job_name,
        sagemaker_session=sdk_session,
        role=submission.role_arn,
        training_image=submission.image_uri,
        source_code=SourceCode(
            source_dir=str(SOURCE_DIR),
            entry_script=ENTRY_SCRIPT,
            requirements=REQUIREMENTS,
            ignore_patterns=SOURCE_IGNORE,
        ),
        input_s3_key_prefix=submission.code_prefix,
        compute=Compute(
            instance_type=submission.instance_type,
            instance_count=submission.instance_count,
            volume_size_in_gb=submission.volume_size_gb,
            enable_managed_spot_training=True if submission.use_spot else None,
        ),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=submission.max_runtime_seconds,
            max_wait_time_in_seconds=submission.max_wait_seconds,
        ),
        output_data_config=OutputDataConfig(s3_output_path=submission.output_uri),
        checkpoint_config=(
            CheckpointConfig(s3_uri=submission.checkpoint_uri, local_path=CHECKPOINT_LOCAL_PATH)
            if submission.checkpoint_uri
            else None
        ),
        hyperparameters=submission.hyperparameters,
        environment=submission.environment,
        tags=[Tag(key=key, value=value) for key, value in submission.tags.items()],
    ).with_metric_definitions(
        [MetricDefinition(name=item["Name"], regex=item["Regex"]) for item in progress.METRIC_DEFINITIONS]
    )
    channels = [InputData(channel_name=name, data_source=uri) for name, uri in submission.channels.items()]
    with _quiet_sdk_debug_logs():
        trainer.train(input_data_config=channels, wait=False, logs=False)


def submit_job(job_id: int) -> None:
    """Claim a queued SageMaker job and create its training job. Raises TransientAWSError to be retried."""
    job = _load_job(job_id)
    if job is None or job.backend != Backend.SAGEMAKER:
        return
    if job.status == S.QUEUED and not lifecycle.transition(job_id, S.PREPARING, "Submitting to SageMaker"):
        job = _load_job(job_id)
        if job is None:
            return
    job.refresh_from_db(fields=["status", "sagemaker_status"])
    if job.sagemaker_status:
        return  # created already (a duplicate delivery of this task)
    if job.status == S.STOPPING:
        lifecycle.transition(job_id, S.STOPPED, "Stopped before it started on SageMaker")
        return
    if job.status != S.PREPARING:
        return
    name = job_name(job)
    TrainingJob.objects.filter(pk=job_id).update(sagemaker_job_name=name)
    job.sagemaker_job_name = name
    submission = None
    try:
        if not is_configured():
            raise SageMakerError(f"SageMaker is {unavailable_reason()}.")
        submission = build_submission(job, data_channels(job), aws().region)
        launch(submission, aws().session)
    except SageMakerError as error:
        _fail_submission(job_id, str(error))
        return
    except ClientError as error:
        code = error_code(error)
        if code == "ResourceInUse":
            if not _adopt(job):
                return
        elif code in TRANSIENT_CODES:
            raise TransientAWSError(code, error_message(error)) from error
        else:
            _fail_submission(job_id, explain_client_error(error, job))
            return
    except (NoCredentialsError, PartialCredentialsError):
        _fail_submission(job_id, NO_CREDENTIALS)
        return
    except CONNECTION_ERRORS as error:
        raise TransientAWSError(type(error).__name__, str(error)) from error
    except ValueError as error:
        # The SDK raises ValueError (pydantic's ValidationError too) for requests it will not send.
        logger.exception("SageMaker submission of job %s failed", job_id)
        _fail_submission(job_id, f"Could not submit the job to SageMaker: {error}")
        return
    _mark_submitted(job, submission)


def _adopt(job: TrainingJob) -> bool:
    """The name is taken: adopt that training job if it is this one's (same output place)."""
    try:
        described = aws().sagemaker.describe_training_job(TrainingJobName=job.sagemaker_job_name)
    except ClientError as error:
        if error_code(error) in TRANSIENT_CODES:
            raise TransientAWSError(error_code(error), error_message(error)) from error
        _fail_submission(job.pk, explain_client_error(error, job))
        return False
    output = described.get("OutputDataConfig", {}).get("S3OutputPath", "").rstrip("/")
    if not output.endswith(f"/{job_prefix(job)}"):
        _fail_submission(
            job.pk,
            f"A SageMaker training job named {job.sagemaker_job_name} already exists and was not made for "
            f"this job (its output goes to {output or 'an unknown place'}). Retry the job to use a new name.",
        )
        return False
    logger.info("job %s: adopted the existing training job %s", job.pk, job.sagemaker_job_name)
    return True


def _mark_submitted(job: TrainingJob, submission: Submission | None) -> None:
    instance = (
        submission.instance_type if submission else (job.instance_type.name if job.instance_type else "")
    )
    message = f"Submitted to SageMaker as {job.sagemaker_job_name}; waiting for {instance}"
    TrainingJob.objects.filter(pk=job.pk).update(
        sagemaker_status="InProgress", sagemaker_secondary_status="Starting", sagemaker_described_at=None
    )
    TrainingJob.objects.filter(pk=job.pk, status=S.PREPARING).update(status_message=message)
    lifecycle.append_log(job.pk, [message])
    # A stop that came while the job was being created: stop it now that it exists.
    if TrainingJob.objects.filter(pk=job.pk, status__in=(S.STOPPING, S.STOPPED)).exists():
        stop_job(job.pk, force=True)


def _fail_submission(job_id: int, message: str) -> None:
    lifecycle.append_log(job_id, [message])
    if not lifecycle.transition(
        job_id, S.STOPPED, "Stopped before it started on SageMaker", only_from={S.STOPPING}
    ):
        lifecycle.transition(job_id, S.FAILED, message)


def give_up_submission(job_id: int, error: TransientAWSError) -> None:
    """The task's retries are spent: say so on the job."""
    _fail_submission(
        job_id,
        f"AWS kept answering {error.code} while the job was being submitted, even after several tries "
        "with growing pauses. Nothing was started; retry the job in a few minutes.",
    )


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


# --- quotas ---------------------------------------------------------------------------------------

QUOTA_CACHE_KEY = "sagemaker:training-quotas"
QUOTA_CACHE_SECONDS = 3600
QUOTA_NAME_RE = re.compile(r"^(ml\.[\w.-]+) for (spot )?training job usage$")


def training_quotas(*, use_cache: bool = True) -> dict[str, dict[str, float]]:
    """{instance type: {"on_demand": n, "spot": n}} from Service Quotas (cached for an hour)."""
    if use_cache:
        cached = cache.get(QUOTA_CACHE_KEY)
        if cached is not None:
            return cached
    quotas: dict[str, dict[str, float]] = {}
    paginator = aws().client("service-quotas").get_paginator("list_service_quotas")
    for page in paginator.paginate(ServiceCode="sagemaker", PaginationConfig={"PageSize": 100}):
        for quota in page.get("Quotas", []):
            match = QUOTA_NAME_RE.match(quota.get("QuotaName", ""))
            if match:
                kind = "spot" if match.group(2) else "on_demand"
                quotas.setdefault(match.group(1), {})[kind] = float(quota.get("Value", 0))
    cache.set(QUOTA_CACHE_KEY, quotas, QUOTA_CACHE_SECONDS)
    return quotas


def suggest_instance_type(job: TrainingJob) -> str | None:
    """An active instance type like the job's whose quota would allow it, cheapest first."""
    wanted = job.instance_type
    if wanted is None:
        return None
    try:
        quotas = training_quotas()
    except (ClientError, BotoCoreError):
        return None
    kind = "spot" if job.use_spot else "on_demand"
    candidates = pricing.active_instance_types().exclude(pk=wanted.pk)
    candidates = candidates.filter(gpu_count__gt=0) if wanted.has_gpu else candidates.filter(gpu_count=0)
    # As much GPU memory first (the model surely fits), then the cheapest.
    ordered = sorted(
        candidates, key=lambda item: (item.gpu_memory_gib < wanted.gpu_memory_gib, item.price_per_hour_usd)
    )
    for candidate in ordered:
        if quotas.get(candidate.name, {}).get(kind, 0) >= max(1, job.instance_count):
            return candidate.name
    return None


# --- stop -------------------------------------------------------------------------------------------


def stop_job(job_id: int, *, force: bool = False) -> None:
    """Ask SageMaker to stop the job; the poller moves it on to stopped. Raises TransientAWSError."""
    job = _load_job(job_id)
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
        if is_not_found(error):
            lifecycle.transition(job_id, S.STOPPED, "Stopped (SageMaker has no such training job)")
        elif code == "ValidationException":
            logger.info("job %s: nothing to stop (%s)", job_id, error_message(error))  # it already ended
        else:
            lifecycle.append_log(job_id, [f"Could not stop the job: {explain_client_error(error, job)}"])
        return
    except (NoCredentialsError, PartialCredentialsError):
        lifecycle.append_log(job_id, [f"Could not stop the job: {NO_CREDENTIALS}"])
        return
    except CONNECTION_ERRORS as error:
        raise TransientAWSError(type(error).__name__, str(error)) from error
    lifecycle.append_log(job_id, ["Asked SageMaker to stop the job"])


def give_up_stop(job_id: int, error: TransientAWSError) -> None:
    lifecycle.append_log(
        job_id,
        [f"AWS kept answering {error.code} to StopTrainingJob; the job may still be running. Stop it again."],
    )


# --- polling -----------------------------------------------------------------------------------------

LOCK_KEY = "sagemaker:poll-lock"
LOCK_SECONDS = 300
WATERMARK_KEY = "sagemaker:poll-watermark"
BACKOFF_KEY = "sagemaker:poll-backoff:{}"
# LastModifiedTime is eventually consistent in ListTrainingJobs: list again a little before the last change.
WATERMARK_OVERLAP = timedelta(seconds=120)
# A job nobody saw change is described again after this long anyway.
STALE_DESCRIBE_AFTER = timedelta(minutes=30)
STOPPING_DESCRIBE_AFTER = timedelta(minutes=2)
# Log streams are looked for again this often (spot restarts and extra instances add streams).
STREAM_DISCOVERY_EVERY = timedelta(minutes=5)
# A finished job whose logs could not be read to the end is finished anyway after this long.
DRAIN_DEADLINE = timedelta(minutes=10)
# A job claimed for submission that never reached SageMaker (its worker died) is settled after this long.
ORPHAN_AFTER = timedelta(minutes=20)
LOG_PAGES_PER_STREAM = 5
LOG_PAGE_LIMIT = 1000


@dataclass(frozen=True)
class PollBudget:
    """Calls per poll cycle and their pace, per kind (AWS limits them per account and region).

    At most (10 + 60 + 100) calls a cycle, 340 a minute at a 30 s interval. ListTrainingJobs
    is held near 2/s; DescribeTrainingJob and the CloudWatch Logs reads stay far below their
    default quotas (GetLogEvents and DescribeLogStreams: 25/s per account).
    """

    list_pages: int = 10
    describes: int = 60
    log_calls: int = 100
    list_per_second: float = 2.0
    describe_per_second: float = 5.0
    log_per_second: float = 10.0


@dataclass
class PollReport:
    jobs: int = 0
    calls: Counter = field(default_factory=Counter)
    described: int = 0
    tailed: int = 0
    finished: int = 0
    throttled: set = field(default_factory=set)
    skipped: str = ""

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


class _Throttled(Exception):
    pass


class _OutOfBudget(Exception):
    pass


class _Pacer:
    def __init__(self, per_second: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.interval = 1.0 / per_second
        self.clock, self.sleep = clock, sleep
        self.next_at: float | None = None

    def wait(self) -> None:
        now = self.clock()
        if self.next_at is not None and now < self.next_at:
            self.sleep(self.next_at - now)
            now = self.next_at
        self.next_at = now + self.interval


def poll_jobs(
    *,
    now: datetime | None = None,
    budget: PollBudget | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> PollReport:
    """One poll cycle over every SageMaker job that is still running in AWS. One at a time."""
    if not is_configured():
        return PollReport(skipped="SageMaker is not configured")
    token = uuid.uuid4().hex
    if not cache.add(LOCK_KEY, token, LOCK_SECONDS):
        return PollReport(skipped="another poll is running")
    try:
        return _Poller(now or timezone.now(), budget or PollBudget(), sleep, clock).run()
    finally:
        if cache.get(LOCK_KEY) == token:
            cache.delete(LOCK_KEY)


POLL_FIELDS = (
    "id",
    "owner_id",
    "status",
    "instance_type",
    "instance_count",
    "use_spot",
    "max_cost_usd",
    "cost_usd",
    "sagemaker_job_name",
    "sagemaker_status",
    "sagemaker_secondary_status",
    "sagemaker_log_state",
    "sagemaker_last_modified",
    "sagemaker_described_at",
    "training_started_at",
    "started_at",
    "stop_requested_at",
)


class _Poller:
    def __init__(
        self, now: datetime, budget: PollBudget, sleep: Callable[[float], None], clock: Callable[[], float]
    ) -> None:
        self.now = now
        self.budget = budget
        self.report = PollReport()
        self.left = {"list": budget.list_pages, "describe": budget.describes, "logs": budget.log_calls}
        self.pacers = {
            "list": _Pacer(budget.list_per_second, clock, sleep),
            "describe": _Pacer(budget.describe_per_second, clock, sleep),
            "logs": _Pacer(budget.log_per_second, clock, sleep),
        }
        self.backed_off = {kind for kind in self.left if cache.get(BACKOFF_KEY.format(kind))}
        self.clean: set[str] = set()
        self._list_complete = False
        self._since: datetime | None = None

    # --- AWS calls, counted, paced and budgeted ---

    def call(self, kind: str, operation: str, **params) -> dict:
        if kind in self.backed_off or kind in self.report.throttled:
            raise _Throttled(kind)
        if self.left[kind] <= 0:
            raise _OutOfBudget(kind)
        self.left[kind] -= 1
        self.pacers[kind].wait()
        self.report.calls[operation] += 1
        client = aws().logs if kind == "logs" else aws().sagemaker
        try:
            response = getattr(client, _snake(operation))(**params)
        except ClientError as error:
            if error_code(error) in THROTTLING_CODES:
                self._back_off(kind)
                raise _Throttled(kind) from error
            raise
        self.clean.add(kind)
        return response

    def _back_off(self, kind: str) -> None:
        """Skip this kind of call for the rest of the cycle and for 1, 2, 4… (at most 8) more cycles."""
        self.report.throttled.add(kind)
        level_key = BACKOFF_KEY.format(kind) + ":level"
        level = min(int(cache.get(level_key) or 0) + 1, 4)
        cache.set(level_key, level, 3600)
        cache.set(BACKOFF_KEY.format(kind), True, settings.SAGEMAKER_POLL_SECONDS * 2 ** (level - 1) - 1)
        logger.warning("SageMaker poll: %s calls throttled; backing off (level %s)", kind, level)

    # --- the cycle ---

    def run(self) -> PollReport:
        jobs = list(
            TrainingJob.objects.filter(backend=Backend.SAGEMAKER)
            .exclude(sagemaker_job_name="")
            .filter(
                Q(sagemaker_status__in=AWS_ACTIVE)
                | Q(sagemaker_status__in=AWS_FINAL, sagemaker_log_state__drained=False)
            )
            .select_related("instance_type")
            .only(*POLL_FIELDS, "instance_type__name", "instance_type__price_per_hour_usd")
            .order_by("pk")
        )
        orphans = list(
            TrainingJob.objects.filter(
                backend=Backend.SAGEMAKER,
                sagemaker_status="",
                status__in=(S.PREPARING, S.STOPPING),
                started_at__lt=self.now - ORPHAN_AFTER,
            )
            .only("id", "status", "sagemaker_job_name", "owner_id", "attempt")
            .order_by("pk")
        )
        self.report.jobs = len(jobs)
        if not jobs and not orphans:
            return self.report
        running = [job for job in jobs if job.sagemaker_status in AWS_ACTIVE]
        with contextlib.suppress(_Throttled, _OutOfBudget):
            self._describe_changed(running)
        self._read_logs(jobs)
        self._update_running_costs(running)
        with contextlib.suppress(_Throttled, _OutOfBudget):
            self._settle_orphans(orphans)
        for kind in self.clean - self.report.throttled:
            cache.delete(BACKOFF_KEY.format(kind) + ":level")
        return self.report

    def _describe_changed(self, jobs: list[TrainingJob]) -> None:
        if not jobs:
            return
        never = [job for job in jobs if job.sagemaker_described_at is None]
        # Jobs never described are described anyway: list only when some job has been.
        changed = self._list_changes(jobs) if len(never) < len(jobs) else {}
        moved = [
            job
            for job in jobs
            if job.sagemaker_described_at is not None
            and job.sagemaker_job_name in changed
            and (
                job.sagemaker_last_modified is None
                or changed[job.sagemaker_job_name]["LastModifiedTime"] > job.sagemaker_last_modified
            )
        ]
        moved.sort(key=lambda job: changed[job.sagemaker_job_name].get("TrainingJobStatus") not in AWS_FINAL)
        moved_ids = {job.pk for job in moved}
        stale = sorted(
            (
                job
                for job in jobs
                if job.sagemaker_described_at is not None
                and job.pk not in moved_ids
                and job.sagemaker_described_at
                < self.now - (STOPPING_DESCRIBE_AFTER if job.status == S.STOPPING else STALE_DESCRIBE_AFTER)
            ),
            key=lambda job: job.sagemaker_described_at,
        )
        queue = never + moved + stale
        done = 0
        try:
            for job in queue:
                described = self.call(
                    "describe", "DescribeTrainingJob", TrainingJobName=job.sagemaker_job_name
                )
                self.report.described += 1
                apply_description(job, described, self.now)
                done += 1
        finally:
            # Jobs listed as changed but not described this cycle must be listed again next cycle.
            deferred = [
                changed[j.sagemaker_job_name]["LastModifiedTime"] for j in queue[done:] if j.pk in moved_ids
            ]
            self._advance_watermark(deferred)

    def _list_changes(self, jobs: list[TrainingJob]) -> dict[str, dict]:
        self._list_complete = False
        since = self._since = self._watermark(jobs)
        if since is None:
            return {}
        names = {job.sagemaker_job_name for job in jobs}
        changed: dict[str, dict] = {}
        params = {
            "LastModifiedTimeAfter": since,
            "NameContains": JOB_NAME_PREFIX,
            "MaxResults": 100,
            "SortBy": "CreationTime",
            "SortOrder": "Descending",
        }
        try:
            while True:
                page = self.call("list", "ListTrainingJobs", **params)
                for summary in page.get("TrainingJobSummaries", []):
                    if summary["TrainingJobName"] in names:
                        changed[summary["TrainingJobName"]] = summary
                if not page.get("NextToken"):
                    self._list_complete = True
                    break
                params["NextToken"] = page["NextToken"]
        except (_Throttled, _OutOfBudget):
            pass  # describe what was found; the watermark stays
        return changed

    def _watermark(self, jobs: list[TrainingJob]) -> datetime | None:
        stored = cache.get(WATERMARK_KEY)
        if stored:
            return datetime.fromisoformat(stored)
        known = [job.sagemaker_last_modified for job in jobs if job.sagemaker_last_modified]
        # Without a watermark (first poll, or a cleared cache) start from the oldest job we know.
        return min(known) - WATERMARK_OVERLAP if known else None

    def _advance_watermark(self, deferred: list[datetime]) -> None:
        """Next cycle lists what changed since a little before this one began (clock skew, lag)."""
        if not self._list_complete and self._since is not None:
            cache.set(WATERMARK_KEY, self._since.isoformat(), None)  # it stopped early: same point again
            return
        mark = self.now - WATERMARK_OVERLAP
        if deferred:
            mark = min(mark, min(deferred) - timedelta(seconds=1))
        cache.set(WATERMARK_KEY, mark.isoformat(), None)

    def _read_logs(self, jobs: list[TrainingJob]) -> None:
        draining = sorted(
            (job for job in jobs if job.sagemaker_status in AWS_FINAL),
            key=lambda job: job.sagemaker_described_at or self.now,
        )
        running = sorted(
            (
                job
                for job in jobs
                if job.sagemaker_status in AWS_ACTIVE and job.sagemaker_secondary_status in LOGGING_SECONDARY
            ),
            key=lambda job: (job.sagemaker_log_state or {}).get("tailed_at", ""),
        )
        for job in draining:
            drained = False
            with contextlib.suppress(_Throttled, _OutOfBudget):
                drained = self._tail(job, drain=True)
            overdue = job.sagemaker_described_at and job.sagemaker_described_at < self.now - DRAIN_DEADLINE
            if drained or overdue:
                finish(job, complete_logs=drained)
                self.report.finished += 1
        for job in running:
            try:
                self._tail(job, drain=False)
            except (_Throttled, _OutOfBudget):
                break

    def _tail(self, job: TrainingJob, *, drain: bool) -> bool:
        """Read the job's log streams on from their tokens. True once every stream is read to its end."""
        state = dict(job.sagemaker_log_state or {})
        streams: dict[str, str] = dict(state.get("streams") or {})
        discovered = state.get("discovered_at")
        # One instance, no spot restarts: its one stream is all there is, even at the end.
        may_add_streams = job.use_spot or job.instance_count > 1
        want_discovery = (
            not streams
            or (drain and may_add_streams and not state.get("final_discovery"))
            or (
                (job.use_spot or len(streams) < job.instance_count)
                and (not discovered or datetime.fromisoformat(discovered) < self.now - STREAM_DISCOVERY_EVERY)
            )
        )
        complete = True
        try:
            if want_discovery:
                try:
                    found = self.call(
                        "logs",
                        "DescribeLogStreams",
                        logGroupName=LOG_GROUP,
                        logStreamNamePrefix=f"{job.sagemaker_job_name}/",
                    )
                except ClientError as error:
                    if not is_not_found(error):
                        raise
                    found = {"logStreams": []}
                for stream in found.get("logStreams", []):
                    streams.setdefault(stream["logStreamName"], "")
                state["discovered_at"] = self.now.isoformat()
                if drain:
                    state["final_discovery"] = True
            for stream in sorted(streams):
                pages = 0
                while True:
                    if pages >= (LOG_PAGES_PER_STREAM * (4 if drain else 1)):
                        complete = False
                        break
                    token = streams[stream]
                    params = {
                        "logGroupName": LOG_GROUP,
                        "logStreamName": stream,
                        "startFromHead": True,
                        "limit": LOG_PAGE_LIMIT,
                    }
                    if token:
                        params["nextToken"] = token
                    page = self.call("logs", "GetLogEvents", **params)
                    pages += 1
                    events = page.get("events", [])
                    self._feed(job, events)
                    streams[stream] = page.get("nextForwardToken") or token
                    if not events or streams[stream] == token:
                        break
                    if not drain and len(events) < LOG_PAGE_LIMIT:
                        break  # most likely caught up; the next cycle goes on from the token anyway
        except (_Throttled, _OutOfBudget):
            complete = False
            raise
        except ClientError as error:
            complete = False
            logger.warning("job %s: could not read its logs: %s", job.pk, error)
        finally:
            state["streams"] = streams
            state["tailed_at"] = self.now.isoformat()
            TrainingJob.objects.filter(pk=job.pk).update(sagemaker_log_state=state)
            job.sagemaker_log_state = state
            self.report.tailed += 1
        return complete

    def _feed(self, job: TrainingJob, events: list[dict]) -> None:
        lines = []
        for log_event in events:
            for line in str(log_event.get("message", "")).splitlines():
                event = progress.parse_event(line)
                if event is None:
                    lines.append(line)
                    continue
                lifecycle.record_event(job.pk, event)
                lines.append(lifecycle.describe_event(event))
        lifecycle.append_log(job.pk, lines)

    def _update_running_costs(self, jobs: list[TrainingJob]) -> None:
        changed = []
        for job in jobs:
            if job.instance_type is None or job.training_started_at is None:
                continue
            if job.sagemaker_status not in AWS_ACTIVE:
                continue
            cost = pricing.running_cost(
                job.instance_type, job.instance_count, job.training_started_at, self.now
            )
            if cost != job.cost_usd:
                job.cost_usd = cost
                changed.append(job)
        TrainingJob.objects.bulk_update(changed, ["cost_usd"], batch_size=500)

    def _settle_orphans(self, orphans: list[TrainingJob]) -> None:
        for job in orphans:
            name = job.sagemaker_job_name or job_name(job)
            try:
                described = self.call("describe", "DescribeTrainingJob", TrainingJobName=name)
            except ClientError as error:
                if not is_not_found(error):
                    raise
                if job.status == S.STOPPING:
                    lifecycle.transition(job.pk, S.STOPPED, "Stopped before it started on SageMaker")
                else:
                    lifecycle.transition(
                        job.pk,
                        S.FAILED,
                        "The submission to SageMaker did not finish (its worker stopped); "
                        "nothing is running. Retry the job.",
                    )
                continue
            TrainingJob.objects.filter(pk=job.pk).update(
                sagemaker_job_name=name, sagemaker_status="InProgress"
            )
            job = TrainingJob.objects.select_related("instance_type").get(pk=job.pk)
            apply_description(job, described, self.now)


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


# --- applying what AWS says ------------------------------------------------------------------------

SECONDARY_MESSAGES = {
    "Starting": "Starting the training job",
    "Pending": "Waiting for compute capacity",
    "LaunchingMLInstances": "Launching the instances",
    "PreparingTrainingStack": "Preparing the training stack",
    "Downloading": "Downloading the training data",
    "DownloadingTrainingImage": "Downloading the training image",
    "Training": "Training",
    "Interrupted": "The spot instance was interrupted; SageMaker resumes when capacity returns",
    "Restarting": "Restarting after an interruption",
    "Updating": "Updating the training job",
    "Uploading": "Uploading the model to S3",
    "Stopping": "Stopping on SageMaker",
}


def apply_description(job: TrainingJob, described: dict, now: datetime) -> None:
    """Store what DescribeTrainingJob says and move the job along (final states wait for its logs)."""
    status = described.get("TrainingJobStatus", "")
    secondary = described.get("SecondaryStatus", "")
    updates: dict[str, Any] = {
        "sagemaker_status": status,
        "sagemaker_secondary_status": secondary,
        "sagemaker_last_modified": described.get("LastModifiedTime"),
        "sagemaker_described_at": now,
    }
    started = described.get("TrainingStartTime")
    if started:
        updates["training_started_at"] = started
    artifacts = (described.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if artifacts:
        updates["model_artifacts_uri"] = artifacts
    instance_type = job.instance_type
    if status in AWS_FINAL:
        billable = described.get("BillableTimeInSeconds")
        training = described.get("TrainingTimeInSeconds")
        if billable is None and started and described.get("TrainingEndTime"):
            billable = int((described["TrainingEndTime"] - started).total_seconds())
        updates["billable_seconds"] = billable
        updates["training_seconds"] = training if training is not None else billable
        if instance_type is not None:
            updates["cost_usd"] = pricing.cost_for_seconds(billable or 0, instance_type, job.instance_count)
        state = dict(job.sagemaker_log_state or {})
        state.update(drained=False, failure_reason=described.get("FailureReason", ""))
        state["max_runtime"] = (described.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
        updates["sagemaker_log_state"] = state
    elif started and instance_type is not None:
        updates["cost_usd"] = pricing.running_cost(instance_type, job.instance_count, started, now)
    TrainingJob.objects.filter(pk=job.pk).update(**updates)
    for name, value in updates.items():
        setattr(job, name, value)
    if status == "InProgress":
        _apply_progress(job, secondary, described)
    elif status == "Stopping":
        lifecycle.transition(job.pk, S.STOPPING, SECONDARY_MESSAGES["Stopping"])


def _apply_progress(job: TrainingJob, secondary: str, described: dict) -> None:
    message = SECONDARY_MESSAGES.get(secondary, secondary)
    if secondary == "Training":
        message = (
            f"Training on {job.instance_count} × {job.instance_type}"
            if job.instance_count > 1
            else (f"Training on {job.instance_type}")
        )
    detail = _latest_transition_message(described)
    if detail and secondary in ("Pending", "Starting", "Interrupted", "Restarting", "Downloading"):
        message = f"{message}: {detail}"
    if secondary in ("Training", "Interrupted", "Restarting"):
        if lifecycle.transition(job.pk, S.TRAINING, message):
            return
    elif secondary == "Uploading" and lifecycle.transition(job.pk, S.UPLOADING, message):
        return
    # No move (already there, or a sub-step): keep the message current, without touching the state.
    TrainingJob.objects.filter(pk=job.pk, status__in=(S.PREPARING, S.TRAINING, S.UPLOADING)).exclude(
        status_message=message
    ).update(status_message=message[:1000])


def _latest_transition_message(described: dict) -> str:
    transitions = described.get("SecondaryStatusTransitions") or []
    return str(transitions[-1].get("StatusMessage", "")).strip() if transitions else ""


def finish(job: TrainingJob, *, complete_logs: bool) -> None:
    """Move a job that ended in AWS to its final state, once its logs are read."""
    state = dict(job.sagemaker_log_state or {})
    state["drained"] = True
    TrainingJob.objects.filter(pk=job.pk).update(sagemaker_log_state=state)
    job.refresh_from_db(
        fields=["cost_usd", "billable_seconds", "training_seconds", "use_spot", "max_cost_usd"]
    )
    if not complete_logs:
        lifecycle.append_log(job.pk, ["(The end of the log could not be read from CloudWatch in time.)"])
    status, secondary = job.sagemaker_status, job.sagemaker_secondary_status
    if status == "Completed":
        message = f"Completed on SageMaker: {_billing_summary(job)}"
        lifecycle.append_log(job.pk, [message])
        lifecycle.transition(job.pk, S.COMPLETED, message)
    elif status == "Failed":
        reason = state.get("failure_reason") or "no reason given"
        message = f"SageMaker: {reason}"
        lifecycle.append_log(job.pk, [message])
        lifecycle.transition(job.pk, S.FAILED, message)
    elif status == "Stopped":
        if secondary == "MaxRuntimeExceeded":
            limit = state.get("max_runtime")
            cap = f"${job.max_cost_usd:.2f} cost cap" if job.max_cost_usd is not None else "monthly budget"
            message = (
                f"Stopped by AWS when the job reached its {cap}"
                + (f" ({_duration(limit)} of run time)" if limit else "")
                + f"; {_billing_summary(job)}. Clone it with a higher cap to train longer."
            )
        elif secondary == "MaxWaitTimeExceeded":
            message = (
                "Stopped by AWS: no spot capacity came within the maximum wait time. "
                "Clone the job without spot, or try again later."
            )
        else:
            message = f"Stopped; {_billing_summary(job)}"
        lifecycle.append_log(job.pk, [message])
        lifecycle.transition(job.pk, S.STOPPED, message)


def _billing_summary(job: TrainingJob) -> str:
    text = f"{job.billable_seconds or 0} billable seconds, ${Decimal(job.cost_usd):.2f}"
    savings = job.spot_savings_usd
    if savings:
        text += f" (spot saved ${savings:.2f})"
    return text


def _duration(seconds: int | None) -> str:
    seconds = int(seconds or 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min"


def _load_job(job_id: int) -> TrainingJob | None:
    return (
        TrainingJob.objects.select_related("owner", "dataset", "base_model", "instance_type")
        .filter(pk=job_id)
        .first()
    )


# --- setup checks (manage.py check_sagemaker) -------------------------------------------------------


@dataclass
class Check:
    ok: bool
    message: str
    fatal: bool = True


def run_checks() -> list[Check]:
    """Credentials, role, bucket and training quotas, each as a line for check_sagemaker."""
    checks: list[Check] = []
    if not is_configured():
        checks.append(Check(False, f"SageMaker is {unavailable_reason()}"))
    client = aws()
    try:
        identity = client.client("sts").get_caller_identity()
        checks.append(Check(True, f"AWS credentials: {identity['Arn']} (account {identity['Account']})"))
    except (NoCredentialsError, PartialCredentialsError):
        checks.append(Check(False, NO_CREDENTIALS))
        return checks
    except (ClientError, BotoCoreError) as error:
        checks.append(Check(False, f"AWS credentials: {_describe_failure(error)}"))
        return checks
    checks.append(_check_role())
    checks.extend(_check_buckets())
    checks.extend(_check_quotas())
    return checks


def _describe_failure(error: Exception) -> str:
    if isinstance(error, ClientError):
        return explain_client_error(error)
    return str(error)


def _check_role() -> Check:
    arn = settings.SAGEMAKER_ROLE_ARN
    if not arn:
        return Check(False, "Role: SAGEMAKER_ROLE_ARN is not set")
    role_name = arn.rsplit("/", 1)[-1]
    try:
        role = aws().client("iam").get_role(RoleName=role_name)["Role"]
    except ClientError as error:
        if error_code(error) in ("NoSuchEntity", "NoSuchEntityException"):
            return Check(False, f"Role: {arn} does not exist")
        return Check(False, f"Role: could not read {arn} ({error_code(error)}: {error_message(error)})")
    trust = role.get("AssumeRolePolicyDocument") or {}
    if isinstance(trust, str):
        trust = json.loads(trust) if trust.strip().startswith("{") else {}
    if "sagemaker.amazonaws.com" not in json.dumps(trust):
        return Check(False, f"Role: {arn} exists but its trust policy does not allow sagemaker.amazonaws.com")
    return Check(True, f"Role: {arn} exists and SageMaker may assume it")


def _check_buckets() -> list[Check]:
    checks = []
    bucket = bucket_name()
    if not bucket:
        return [Check(False, "Bucket: set SAGEMAKER_BUCKET or AWS_STORAGE_BUCKET_NAME")]
    s3 = aws().s3
    key = f"llmtuner-check/{uuid.uuid4().hex}.txt"
    try:
        s3.head_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key=key, Body=b"check_sagemaker")
        s3.delete_object(Bucket=bucket, Key=key)
        checks.append(Check(True, f"Bucket: s3://{bucket} is reachable and writable"))
    except ClientError as error:
        checks.append(
            Check(False, f"Bucket: s3://{bucket}: {error_code(error)} {error_message(error)}".strip())
        )
    datasets = settings.AWS_STORAGE_BUCKET_NAME
    if datasets and datasets != bucket and not settings.AWS_S3_ENDPOINT_URL:
        try:
            s3.head_bucket(Bucket=datasets)
            checks.append(
                Check(True, f"Datasets bucket: s3://{datasets} is reachable (the role must read it too)")
            )
        except ClientError as error:
            checks.append(Check(False, f"Datasets bucket: s3://{datasets}: {error_code(error)}"))
    return checks


def _check_quotas() -> list[Check]:
    try:
        quotas = training_quotas(use_cache=False)
    except (ClientError, BotoCoreError) as error:
        reason = f"{error_code(error)}: {error_message(error)}" if isinstance(error, ClientError) else error
        return [
            Check(
                False,
                f"Quotas: could not read them ({reason}); "
                "allow servicequotas:ListServiceQuotas to see them here",
                fatal=False,
            )
        ]
    checks = []
    usable = False
    for instance_type in pricing.active_instance_types().order_by("gpu_count", "price_per_hour_usd"):
        values = quotas.get(instance_type.name, {})
        on_demand, spot = values.get("on_demand"), values.get("spot")
        if on_demand is None and spot is None:
            checks.append(Check(False, f"Quota: {instance_type.name}: no training quota found", fatal=False))
            continue
        usable = usable or bool(on_demand) or bool(spot)
        text = (
            f"Quota: {instance_type.name} for training job usage: {_fmt_quota(on_demand)}, "
            f"spot: {_fmt_quota(spot)}"
        )
        if not on_demand and not spot:
            text += " (request an increase in Service Quotas to use it)"
        checks.append(Check(bool(on_demand) or bool(spot), text, fatal=False))
    if not usable:
        checks.append(Check(False, "Quotas: no instance type of the catalogue may run a training job"))
    return checks


def _fmt_quota(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"{value:g} instance{'s' if value != 1 else ''}"
