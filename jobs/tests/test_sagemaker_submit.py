"""Submitting a SageMaker job: the request the SDK builds, channels, caps, secrets, errors, adoption, stop.

moto plays S3 and SageMaker; where a test needs SageMaker to refuse, botocore's
Stubber answers on the SDK's own client (after checking the request against
the API model). The CreateTrainingJob request is captured at the boto client
boundary (`before-parameter-build`), i.e. exactly what would be sent to AWS.
"""

# ruff: noqa: F811 (the fixtures imported from test_sagemaker_support are redefined as arguments)
from __future__ import annotations

import json
import logging
import shutil
import time
from decimal import Decimal

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from accounts.models import get_profile
from jobs import lifecycle, tasks
from jobs.backends import queue_job
from jobs.backends import sagemaker as sm
from jobs.backends.sagemaker import clients, submit
from jobs.backends.sagemaker.config import JOB_NAME_RE
from jobs.backends.sagemaker.logs import LOG_GROUP
from jobs.models import JobStatus
from jobs.tests.test_sagemaker_support import (  # noqa: F401 (fixtures)
    BUCKET,
    REGION,
    ROLE_ARN,
    description,
    fake_aws,
    instance,
    refuse_network,
    sagemaker_job,
    sagemaker_settings,
)
from training_scripts.hyperparameters import to_sagemaker_hyperparameters, validate_hyperparameters
from training_scripts.progress import METRIC_DEFINITIONS, format_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def moto(fake_aws):
    # moto answers every request in-process from here on (it too hooks `before-send`).
    fake_aws.session.events.unregister("before-send", refuse_network)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield fake_aws


@pytest.fixture
def requests_sent(moto):
    """Every CreateTrainingJob request, as validated by botocore, in the order sent."""
    sent = []

    def remember(params, **kwargs):
        sent.append(json.loads(json.dumps(params, default=str)))

    moto.session.events.register("before-parameter-build.sagemaker.CreateTrainingJob", remember)
    return sent


def sdk_stubber(client: sm.AWS) -> Stubber:
    """A Stubber on the client the SageMaker SDK creates training jobs with (one per boto session)."""
    from sagemaker.core.utils.utils import SageMakerClient

    return Stubber(SageMakerClient(session=client.session).get_client("sagemaker"))


def bucket_keys(prefix: str) -> list[str]:
    listing = boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def channels(request: dict) -> dict[str, str]:
    return {
        channel["ChannelName"]: channel["DataSource"]["S3DataSource"]["S3Uri"]
        for channel in request["InputDataConfig"]
    }


# --- names and configuration ----------------------------------------------------------------------


def test_job_names_are_fixed_by_id_and_attempt_and_valid_for_sagemaker(owner, sagemaker_settings):
    job = sagemaker_job(owner, running=False)
    assert sm.job_name(job) == f"llmtuner-job-{job.pk}-1"
    job.pk, job.attempt = 10**15, 999
    assert JOB_NAME_RE.match(sm.job_name(job))
    assert len(sm.job_name(job)) <= 63
    assert not JOB_NAME_RE.match("-llmtuner") and not JOB_NAME_RE.match("a" * 64)
    assert not JOB_NAME_RE.match("llmtuner_job_1")


def test_sagemaker_is_offered_only_once_role_and_bucket_are_set(settings):
    settings.SAGEMAKER_ROLE_ARN = ""
    settings.SAGEMAKER_BUCKET = ""
    settings.AWS_STORAGE_BUCKET_NAME = ""
    assert sm.is_configured() is False
    assert "SAGEMAKER_ROLE_ARN" in sm.unavailable_reason()
    assert "SAGEMAKER_BUCKET" in sm.unavailable_reason()
    assert "check_sagemaker" in sm.unavailable_reason()
    settings.SAGEMAKER_ROLE_ARN = ROLE_ARN
    settings.AWS_STORAGE_BUCKET_NAME = (
        "datasets"  # the datasets bucket serves when no SageMaker bucket is set
    )
    assert sm.is_configured() is True
    assert sm.unavailable_reason() == ""
    assert sm.bucket_name() == "datasets"


def test_the_cost_cap_becomes_max_runtime_so_aws_enforces_it(owner, sagemaker_settings):
    job = sagemaker_job(owner, running=False, max_cost_usd=Decimal("10.00"), instance_count=2)
    # $10 ÷ ($1.408/h × 2) = 3.551 h = 12784 s (rounded down).
    assert submit.runtime_limit(job, job.instance_type) == 12784


def test_a_cap_too_small_to_start_is_refused_with_what_would_do(owner, sagemaker_settings):
    job = sagemaker_job(owner, running=False, max_cost_usd=Decimal("0.05"))
    with pytest.raises(sm.SageMakerError, match=r"buys only 127 s .* allow at least \$0.12"):
        submit.runtime_limit(job, job.instance_type)


def test_without_a_cap_the_budget_left_caps_the_job(owner, sagemaker_settings):
    profile = get_profile(owner)
    profile.monthly_budget_usd = Decimal("5.00")
    profile.save()
    job = sagemaker_job(owner, running=False, max_cost_usd=None)
    assert submit.runtime_limit(job, job.instance_type) == int(Decimal("5") / Decimal("1.408") * 3600)


# --- the request the SDK builds -----------------------------------------------------------------------


def test_a_gpu_job_is_created_on_the_hugging_face_image_with_our_name_data_and_cap(
    owner, moto, requests_sent, django_capture_on_commit_callbacks
):
    job = sagemaker_job(owner, running=False)
    with django_capture_on_commit_callbacks(execute=True):
        queue_job(job)  # the task runs in-process (eager) once the transaction commits
    job.refresh_from_db()

    assert job.status == JobStatus.PREPARING, job.status_message
    assert job.sagemaker_job_name == f"llmtuner-job-{job.pk}-1"
    assert job.sagemaker_status == "InProgress"
    assert (
        job.status_message == f"Submitted to SageMaker as {job.sagemaker_job_name}; waiting for ml.g5.xlarge"
    )
    [request] = requests_sent
    assert request["TrainingJobName"] == job.sagemaker_job_name
    image = request["AlgorithmSpecification"]["TrainingImage"]
    assert image.startswith("763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:")
    assert "transformers5.3.0-gpu" in image
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.g5.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 30,
    }
    clean, _ = validate_hyperparameters(job.hyperparameters)
    # sharding auto resolved by the memory check: one A10G, nothing to shard
    assert request["HyperParameters"] == to_sagemaker_hyperparameters({**clean, "sharding": "ddp"})
    assert request["HyperParameters"]["base_model"] == '"scratch:tiny-gpt2"'
    prefix = f"users/{owner.pk}/jobs/{job.pk}"
    found = channels(request)
    assert found["train"] == f"s3://{BUCKET}/{prefix}/data/train/train.jsonl"
    assert found["validation"] == f"s3://{BUCKET}/{prefix}/data/validation/validation.jsonl"
    assert found["code"].startswith(f"s3://{BUCKET}/{prefix}/source/")
    assert request["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/{prefix}/"
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 25568}  # $10 at $1.408/h
    assert "EnableManagedSpotTraining" not in request
    # Every job keeps checkpoints, so a stopped or capped one can resume (test_resume_sagemaker.py).
    assert request["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/{prefix}/checkpoints/"
    assert request["RoleArn"] == ROLE_ARN
    assert {"Key": "llmtuner:owner", "Value": str(owner.pk)} in request["Tags"]
    assert {"Key": "llmtuner:job", "Value": str(job.pk)} in request["Tags"]
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == [
        {"Name": item["Name"], "Regex": item["Regex"]} for item in METRIC_DEFINITIONS
    ]
    assert "Environment" not in request or "HF_TOKEN" not in request["Environment"]
    # The data were copied from local storage, and the code sits under the job's prefix.
    keys = bucket_keys(prefix)
    assert f"{prefix}/data/train/train.jsonl" in keys
    assert any(key.endswith("/input/code/finetune.py") for key in keys)
    code = [key for key in keys if "/input/code/" in key]
    assert not any("__pycache__" in key or key.endswith(".pyc") or "README" in key for key in code)
    assert moto.sagemaker.describe_training_job(TrainingJobName=job.sagemaker_job_name)["TrainingJobStatus"]


def test_the_uploaded_source_leaves_out_the_training_scripts_tests_and_caches(
    owner, moto, monkeypatch, tmp_path
):
    source = tmp_path / "training_scripts"
    shutil.copytree(submit.SOURCE_DIR, source, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    (source / "tests").mkdir()
    (source / "tests" / "test_engine.py").write_text("def test_engine(): pass\n")
    (source / "tests" / "__pycache__").mkdir()
    (source / "tests" / "__pycache__" / "test_engine.cpython-311.pyc").write_bytes(b"\0")
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "engine.cpython-311.pyc").write_bytes(b"\0")
    monkeypatch.setattr(submit, "SOURCE_DIR", source)
    job = sagemaker_job(owner, running=False)
    sm.submit_job(job.pk)

    code = [key for key in bucket_keys(f"users/{owner.pk}/jobs/{job.pk}") if "/input/code/" in key]
    uploaded = {key.split("/input/code/", 1)[1] for key in code}
    assert {"finetune.py", "engine.py", "requirements.txt"} <= uploaded
    assert not [name for name in uploaded if name.startswith("tests/") or "__pycache__" in name]


def test_a_cpu_spot_job_uses_the_pytorch_image_requirements_checkpoints_and_a_wait_limit(
    owner, moto, requests_sent
):
    job = sagemaker_job(
        owner, running=False, instance="ml.m5.xlarge", use_spot=True, max_cost_usd=Decimal("1")
    )
    tasks.submit_sagemaker_job.delay(job.pk)
    job.refresh_from_db()

    assert job.sagemaker_status == "InProgress", job.status_message
    [request] = requests_sent
    assert request["AlgorithmSpecification"]["TrainingImage"] == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.9.0-cpu-py312"
    )
    assert request["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"
    runtime = int(Decimal(1) / Decimal("0.23") * 3600)
    assert request["StoppingCondition"] == {
        "MaxRuntimeInSeconds": runtime,
        "MaxWaitTimeInSeconds": 2 * runtime,
    }
    assert request["EnableManagedSpotTraining"] is True
    prefix = f"users/{owner.pk}/jobs/{job.pk}"
    assert request["CheckpointConfig"] == {
        "S3Uri": f"s3://{BUCKET}/{prefix}/checkpoints/",
        "LocalPath": "/opt/ml/checkpoints",
    }
    # The container installs training_scripts/requirements.txt before it runs finetune.py.
    s3 = boto3.client("s3", region_name=REGION)
    [script_key] = [key for key in bucket_keys(prefix) if key.endswith("/sm_drivers/sm_train.sh")]
    script = s3.get_object(Bucket=BUCKET, Key=script_key)["Body"].read().decode()
    assert "install_requirements.py requirements.txt" in script
    assert "basic_script_driver.py" in script
    [source_key] = [key for key in bucket_keys(prefix) if key.endswith("/sm_drivers/sourcecode.json")]
    assert (
        json.loads(s3.get_object(Bucket=BUCKET, Key=source_key)["Body"].read())["entry_script"]
        == "finetune.py"
    )


def test_hf_token_travels_as_an_environment_variable_never_a_hyperparameter_nor_a_log_line(
    owner, moto, requests_sent, monkeypatch, caplog
):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_do_not_log")
    job = sagemaker_job(owner, running=False, hyperparameters={"base_model": "distilgpt2", "epochs": 1})
    caplog.set_level(logging.DEBUG)
    for name in (
        "botocore.endpoint",
        "botocore.hooks",
        "sagemaker.core.utils.utils",
        "sagemaker.core.resources",
    ):
        caplog.set_level(logging.DEBUG, logger=name)  # even where someone turned debug logging on
    sm.submit_job(job.pk)

    [request] = requests_sent
    assert request["Environment"] == {"HF_TOKEN": "hf_secret_do_not_log"}
    assert "hf_secret_do_not_log" not in json.dumps(request["HyperParameters"])
    assert "hf_secret_do_not_log" not in caplog.text
    assert "hf_secret_do_not_log" not in repr(submit.build_submission(job, {"train": "s3://b/k"}, REGION))


def test_a_dataset_in_the_datasets_bucket_is_read_where_it_is(owner, moto, requests_sent, settings):
    boto3.client("s3", region_name=REGION).create_bucket(Bucket="llmtuner-datasets")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {"bucket_name": "llmtuner-datasets", "region_name": REGION},
        },
    }
    job = sagemaker_job(owner, running=False)
    sm.submit_job(job.pk)

    found = channels(requests_sent[0])
    assert found["train"] == f"s3://llmtuner-datasets/{job.dataset.train_file}"
    assert found["validation"] == f"s3://llmtuner-datasets/{job.dataset.validation_file}"
    assert not [key for key in bucket_keys(f"users/{owner.pk}/jobs/{job.pk}") if "/data/" in key]


# --- refusals -----------------------------------------------------------------------------------------------


def create_refused(moto, code: str, message: str) -> Stubber:
    stubber = sdk_stubber(moto)
    stubber.add_client_error("create_training_job", service_error_code=code, service_message=message)
    stubber.activate()
    return stubber


def test_a_quota_refusal_names_the_quota_how_to_raise_it_and_an_instance_type_that_has_room(owner, moto):
    instance("ml.g4dn.xlarge")
    job = sagemaker_job(owner, running=False)
    stubber = create_refused(
        moto,
        "ResourceLimitExceeded",
        "The account-level service limit 'ml.g5.xlarge for training job usage' is 0 Instances, with current "
        "utilization of 0 Instances and a request delta of 1 Instances.",
    )
    quotas = Stubber(moto.client("service-quotas"))
    quotas.add_response(
        "list_service_quotas",
        {
            "Quotas": [
                {"QuotaName": "ml.g5.xlarge for training job usage", "Value": 0.0},
                {"QuotaName": "ml.g4dn.xlarge for training job usage", "Value": 2.0},
                {"QuotaName": "ml.g4dn.xlarge for spot training job usage", "Value": 0.0},
                {"QuotaName": "Number of training jobs", "Value": 100.0},
            ]
        },
        {"ServiceCode": "sagemaker", "MaxResults": 100},
    )
    with quotas:
        sm.submit_job(job.pk)
    stubber.assert_no_pending_responses()
    job.refresh_from_db()

    assert job.status == JobStatus.FAILED
    assert "“ml.g5.xlarge for training job usage”" in job.status_message
    assert "Service Quotas" in job.status_message and "Request increase" in job.status_message
    assert "ml.g4dn.xlarge has quota: clone this job and choose it" in job.status_message
    assert job.log_lines.filter(text__contains="ml.g5.xlarge for training job usage").exists()


def test_access_denied_names_the_missing_permission(owner, moto):
    job = sagemaker_job(owner, running=False)
    stubber = create_refused(
        moto,
        "AccessDeniedException",
        "User: arn:aws:iam::123456789012:user/worker is not authorized to perform: iam:PassRole "
        f"on resource: {ROLE_ARN}",
    )
    sm.submit_job(job.pk)
    stubber.assert_no_pending_responses()
    job.refresh_from_db()

    assert job.status == JobStatus.FAILED
    assert f"iam:PassRole on the role {ROLE_ARN}" in job.status_message


def test_access_denied_to_create_training_jobs(owner, moto):
    job = sagemaker_job(owner, running=False)
    create_refused(
        moto, "AccessDeniedException", "User: x is not authorized to perform: sagemaker:CreateTrainingJob"
    )
    sm.submit_job(job.pk)
    job.refresh_from_db()
    assert "AWS denied the worker sagemaker:CreateTrainingJob" in job.status_message


def test_a_validation_error_names_the_field(owner, moto):
    job = sagemaker_job(owner, running=False)
    create_refused(
        moto,
        "ValidationException",
        "1 validation error detected: Value 'ml.g5.large' at 'resourceConfig.instanceType' failed to satisfy "
        "constraint: Member must satisfy enum value set",
    )
    sm.submit_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.status_message.startswith(
        "SageMaker rejected the job's settings in resourceConfig.instanceType"
    )


def test_throttling_is_retried_and_reported_only_when_it_persists(owner, moto):
    job = sagemaker_job(owner, running=False)
    stubber = create_refused(moto, "ThrottlingException", "Rate exceeded")
    stubber.add_client_error("create_training_job", service_error_code="ThrottlingException")

    from celery.exceptions import Retry

    with pytest.raises(Retry):
        tasks.submit_sagemaker_job.apply((job.pk,), retries=0, throw=True)
    job.refresh_from_db()
    assert job.status == JobStatus.PREPARING  # not a failure yet: the task will try again
    assert job.status_message == "Submitting to SageMaker"

    tasks.submit_sagemaker_job.apply((job.pk,), retries=6)  # the last try
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "kept answering ThrottlingException" in job.status_message


def test_retry_delays_grow_with_jitter():
    delays = [sm.retry_delay(n) for n in range(8) for _ in range(20)]
    assert all(1 <= delay <= 300 for delay in delays)
    assert max(sm.retry_delay(0) for _ in range(50)) <= 10
    assert len({round(delay, 3) for delay in delays}) > 100  # jittered


def test_a_job_left_queued_when_sagemaker_was_switched_off_fails_saying_so(owner, fake_aws, settings):
    job = sagemaker_job(owner, running=False)
    settings.SAGEMAKER_ROLE_ARN = ""
    sm.submit_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.status_message.startswith("SageMaker is not configured: set SAGEMAKER_ROLE_ARN")


def test_missing_credentials_fail_the_job_with_how_to_set_them(owner, sagemaker_settings, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setattr(clients, "_aws", sm.AWS(boto3.session.Session(region_name=REGION)))
    job = sagemaker_job(owner, running=False)
    sm.submit_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.status_message.startswith("No AWS credentials were found for the worker")


# --- a retried submission never makes a second job -------------------------------------------------


def test_a_retry_that_meets_its_own_job_adopts_it(owner, moto, requests_sent):
    job = sagemaker_job(owner, running=False)
    name = f"llmtuner-job-{job.pk}-1"
    create_refused(moto, "ResourceInUse", f"Training job names must be unique within an AWS account. {name}")
    ours = Stubber(moto.sagemaker)
    output = f"s3://{BUCKET}/users/{owner.pk}/jobs/{job.pk}/"
    ours.add_response(
        "describe_training_job",
        description(name, "InProgress", "Starting", OutputDataConfig={"S3OutputPath": output}),
        {"TrainingJobName": name},
    )
    with ours:
        sm.submit_job(job.pk)
    ours.assert_no_pending_responses()
    job.refresh_from_db()

    assert len(requests_sent) == 1
    assert job.status == JobStatus.PREPARING
    assert job.sagemaker_status == "InProgress"
    assert job.sagemaker_job_name == name


def test_a_name_taken_by_a_job_that_is_not_ours_is_not_adopted(owner, moto):
    job = sagemaker_job(owner, running=False)
    name = f"llmtuner-job-{job.pk}-1"
    create_refused(moto, "ResourceInUse", "Training job names must be unique")
    ours = Stubber(moto.sagemaker)
    ours.add_response(
        "describe_training_job",
        description(name, OutputDataConfig={"S3OutputPath": "s3://someone-else/users/9/jobs/9/"}),
        {"TrainingJobName": name},
    )
    with ours:
        sm.submit_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "already exists and was not made for this job" in job.status_message


def test_a_duplicate_delivery_of_the_task_creates_nothing(owner, moto, requests_sent):
    job = sagemaker_job(owner, running=False)
    sm.submit_job(job.pk)
    sm.submit_job(job.pk)
    assert len(requests_sent) == 1


# --- stop ---------------------------------------------------------------------------------------------


def test_stopping_a_running_job_asks_sagemaker_and_waits_for_the_poller(
    owner, fake_aws, django_capture_on_commit_callbacks
):
    job = sagemaker_job(owner)
    with Stubber(fake_aws.sagemaker) as stubber:
        stubber.add_response("stop_training_job", {}, {"TrainingJobName": job.sagemaker_job_name})
        with django_capture_on_commit_callbacks(execute=True):
            assert lifecycle.request_stop(job)
        stubber.assert_no_pending_responses()
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPING
    assert job.log_lines.filter(text="Asked SageMaker to stop the job").exists()


def test_stopping_a_job_that_ended_meanwhile_is_harmless(owner, fake_aws, django_capture_on_commit_callbacks):
    job = sagemaker_job(owner)
    with Stubber(fake_aws.sagemaker) as stubber:
        stubber.add_client_error(
            "stop_training_job",
            service_error_code="ValidationException",
            service_message="The job status is Completed",
            expected_params={"TrainingJobName": ANY},
        )
        with django_capture_on_commit_callbacks(execute=True):
            lifecycle.request_stop(job)
        stubber.assert_no_pending_responses()
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPING  # the poller will see how it ended


def test_a_job_stopped_before_submission_never_reaches_sagemaker(owner, moto, requests_sent):
    job = sagemaker_job(owner, running=False, status=JobStatus.PREPARING)
    lifecycle.transition(job.pk, JobStatus.STOPPING)
    sm.submit_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.STOPPED
    assert requests_sent == []


def test_a_stop_that_comes_during_submission_stops_the_new_job(owner, moto, monkeypatch):
    job = sagemaker_job(owner, running=False)
    real_launch = submit.launch

    def launch_then_stop(submission, session):
        real_launch(submission, session)
        lifecycle.transition(job.pk, JobStatus.STOPPING, "Stopping…")  # the owner clicked stop meanwhile

    monkeypatch.setattr(submit, "launch", launch_then_stop)
    stopped = []
    monkeypatch.setattr(moto.sagemaker, "stop_training_job", lambda **params: stopped.append(params))
    sm.submit_job(job.pk)
    assert stopped == [{"TrainingJobName": f"llmtuner-job-{job.pk}-1"}]


# --- end to end on moto: submit, logs in CloudWatch, one poll ---------------------------------------


def test_a_job_submitted_then_polled_reads_its_cloudwatch_log_and_completes(owner, moto):
    job = sagemaker_job(owner, running=False)
    sm.submit_job(job.pk)
    job.refresh_from_db()
    logs = boto3.client("logs", region_name=REGION)
    logs.create_log_group(logGroupName=LOG_GROUP)
    stream = f"{job.sagemaker_job_name}/algo-1-1700000000"
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    lines = [
        "Running Basic Script driver",
        format_event("start", total_steps=30, epochs=1),
        format_event("progress", step=30, total_steps=30, epoch=1.0, loss=1.75),
        format_event("done", step=30, total_steps=30, train_loss=1.8),
    ]
    logs.put_log_events(
        logGroupName=LOG_GROUP,
        logStreamName=stream,
        # CloudWatch (and moto) drop events older than 14 days.
        logEvents=[
            {"timestamp": int(time.time() * 1000) + i, "message": line} for i, line in enumerate(lines)
        ],
    )

    report = sm.poll_jobs(sleep=lambda seconds: None)  # moto's training jobs complete at once
    job.refresh_from_db()

    assert report.described == 1 and report.finished == 1
    assert job.status == JobStatus.COMPLETED, job.status_message
    assert job.status_message.startswith("Completed on SageMaker")
    assert (job.step, job.loss, job.metrics["train_loss"]) == (30, 1.75, 1.8)
    assert job.log_lines.filter(text="Running Basic Script driver").exists()
    assert job.model_artifacts_uri.startswith("s3://")
    assert job.sagemaker_log_state["streams"][stream]
