"""Submission (Celery task `submit_job`): the job's data become S3 channels, `training_scripts/` its
source code, and `sagemaker.train.ModelTrainer` creates the training job without waiting.

The job name is fixed by the job's id and attempt, so a retried submission that
meets `ResourceInUse` adopts the job that exists instead of making a second one.
The job's cost cap becomes MaxRuntimeInSeconds, so AWS itself stops a job that
has spent it. An instance type with several GPUs, or several instances, trains through
the SDK's `Torchrun` distributed config: AWS's torchrun driver starts one process per GPU
on every host (one per CPU-only host), and finetune.py trains one model over all of them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import boto3
from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError
from django.conf import settings

from jobs import artifacts, checkpoints, lifecycle, memory, pricing
from jobs.backends.sagemaker.clients import aws
from jobs.backends.sagemaker.config import (
    bucket_name,
    is_configured,
    job_name,
    job_prefix,
    load_job,
    unavailable_reason,
)
from jobs.backends.sagemaker.errors import (
    CONNECTION_ERRORS,
    NO_CREDENTIALS,
    TRANSIENT_CODES,
    SageMakerError,
    TransientAWSError,
    error_code,
    error_message,
    explain_client_error,
)
from jobs.backends.sagemaker.stop import stop_job
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
SOURCE_DIR = Path(settings.BASE_DIR) / "training_scripts"
ENTRY_SCRIPT = "finetune.py"
REQUIREMENTS = "requirements.txt"
# Names left out of the uploaded source at any depth: the engine's tests (training_scripts/tests/) stay home.
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
    # Processes torchrun starts on each host; 0: no torchrun (one GPU or CPU, one instance).
    processes_per_host: int = 0
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


def processes_per_host(instance_type: InstanceType, instance_count: int) -> int:
    """One process per GPU (one per CPU-only host) when the job spans several; 0 for a single device."""
    per_host = max(1, int(instance_type.gpu_count or 0))
    return per_host if per_host > 1 or instance_count > 1 else 0


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


def build_submission(
    job: TrainingJob, channels: dict[str, str], region: str, checkpoint_uri: str | None = None
) -> Submission:
    """The request for `job` (pure: settings, the catalogue and the job). Raises SageMakerError."""
    instance_type = job.instance_type
    if instance_type is None:
        raise SageMakerError("Choose an instance type to train on SageMaker.")
    if not instance_type.is_active:
        raise SageMakerError(f"{instance_type.name} is no longer offered; clone the job and pick another.")
    clean, errors = validate_hyperparameters(job.hyperparameters)
    if errors:
        raise SageMakerError(format_errors(errors))
    devices = max(1, int(instance_type.gpu_count or 0)) * max(1, job.instance_count)
    gpu_memory = float(instance_type.gpu_memory_gib or 0) if instance_type.has_gpu else 0.0
    clean = memory.with_sharding(clean, job.base_model, gpu_memory, devices)
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
        processes_per_host=processes_per_host(instance_type, job.instance_count),
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
        # Every job keeps checkpoints (a spot restart, a Resume, on either backend: jobs/checkpoints.py).
        checkpoint_uri=checkpoint_uri or checkpoints_uri(job),
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
    if reads_storage_directly():
        # The datasets bucket is in AWS: SageMaker reads it directly (the role needs s3:GetObject there).
        return {channel: storage.s3_uri(key) for channel, key in keys.items()}
    channels = {}
    for channel, key in keys.items():
        target = f"{job_prefix(job)}/data/{channel}/{channel}.jsonl"
        with storage.open_stream(key) as stream:
            aws().s3.upload_fileobj(stream, bucket_name(), target)
        channels[channel] = f"s3://{bucket_name()}/{target}"
    return channels


def reads_storage_directly() -> bool:
    """Whether SageMaker reads and writes our storage's own keys (S3 in AWS, not an emulator)."""
    return storage.is_s3() and not settings.AWS_S3_ENDPOINT_URL


def checkpoints_uri(job: TrainingJob) -> str:
    """Where SageMaker keeps the job's checkpoints: the very keys of its chain's checkpoints in storage,
    or, when SageMaker cannot reach our storage, the same keys in the SageMaker bucket."""
    prefix = checkpoints.prefix(job)
    if reads_storage_directly():
        return storage.s3_uri(prefix)
    return f"s3://{bucket_name()}/{prefix}"


def copy_checkpoint_up(job: TrainingJob) -> None:
    """Storage SageMaker cannot reach: copy the chain's newest checkpoint (say, one a local attempt
    made) to the same keys in the SageMaker bucket, state.json last, so the job resumes from it."""
    if reads_storage_directly():
        return
    step = checkpoints.latest_step(job)
    if step is None:
        return
    folder = f"{checkpoints.prefix(job)}checkpoint-{step}/"
    keys = sorted(storage.list_keys(folder), key=lambda key: key.endswith(f"/{checkpoints.COMPLETE_MARKER}"))
    for key in keys:
        with storage.open_stream(key) as stream:
            aws().s3.upload_fileobj(stream, bucket_name(), key)


def init_model_channel(job: TrainingJob) -> dict[str, str]:
    """A continued job's `init_model` channel: the tuned model it starts from (contract C3).

    A SageMaker job's model.tar.gz as it is (the script extracts it); a local job's model folder
    where it is stored, or copied to the SageMaker bucket when SageMaker cannot reach storage.
    """
    source = job.continued_from
    if source is None:
        return {}
    try:
        location = artifacts.locate(source)
    except artifacts.ModelArtifactsError as error:
        raise SageMakerError(f"The tuned model it continues from is not there: {error}") from None
    if location.startswith("s3://"):
        return {"init_model": location}
    if reads_storage_directly():
        return {"init_model": storage.s3_uri(location)}
    target = f"{job_prefix(job)}/init_model/"
    for key in storage.list_keys(location):
        with storage.open_stream(key) as stream:
            aws().s3.upload_fileobj(stream, bucket_name(), target + key.removeprefix(location))
    return {"init_model": f"s3://{bucket_name()}/{target}"}


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
    from sagemaker.train.distributed import Torchrun

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
        distributed=(
            Torchrun(process_count_per_node=submission.processes_per_host)
            if submission.processes_per_host
            else None
        ),
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
    job = load_job(job_id)
    if job is None or job.backend != Backend.SAGEMAKER:
        return
    if job.status == S.QUEUED and not lifecycle.transition(job_id, S.PREPARING, "Submitting to SageMaker"):
        job = load_job(job_id)
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
        copy_checkpoint_up(job)
        channels = {**data_channels(job), **init_model_channel(job)}
        submission = build_submission(job, channels, aws().region)
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
