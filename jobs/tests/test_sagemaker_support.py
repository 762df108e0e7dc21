"""Test support for the SageMaker backend: fake credentials, an offline boto session, a stub account.

Nothing here (or in any SageMaker test) reaches AWS: credentials are fake, the
session refuses to send a request (`before-send`), and every call is answered
by moto, by botocore's Stubber, or by `StubAccount`, which answers at the boto
client boundary after botocore has validated the request against AWS's own
API model, and checks each of its answers against the operation's output shape
the way Stubber does.

The fixtures are imported by the test_sagemaker*.py modules; the few tests at the
bottom check the stub account itself.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from botocore.validate import validate_parameters
from django.core.cache import cache

from jobs.backends import sagemaker as sm
from jobs.backends.sagemaker import clients
from jobs.models import Backend, InstanceType, JobStatus
from jobs.tests.conftest import make_job

REGION = "us-east-1"
ACCOUNT = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/llmtuner-sagemaker"
BUCKET = "llmtuner-test-jobs"
FAKE_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "SAGEMAKER_VALIDATE_ROLE": "false",
}


class NetworkRefused(AssertionError):
    pass


def refuse_network(request, **kwargs):
    raise NetworkRefused(f"a test tried to reach AWS: {request.method} {request.url}")


def offline_session() -> boto3.session.Session:
    session = boto3.session.Session(
        region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    # moto (when active) answers in `before-send` before this handler runs; nothing else may.
    session.events.register("before-send", refuse_network)
    return session


@pytest.fixture
def sagemaker_settings(settings, monkeypatch):
    for name, value in FAKE_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    settings.SAGEMAKER_ROLE_ARN = ROLE_ARN
    settings.SAGEMAKER_BUCKET = BUCKET
    settings.AWS_REGION = REGION
    settings.SAGEMAKER_POLL_SECONDS = 30
    # The poller's lock, watermark and back-off live in the cache: keep them in this process
    # (the default file cache is shared with every other test run on the machine).
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    cache.clear()
    monkeypatch.setattr(clients, "_aws", None)
    return settings


@pytest.fixture
def fake_aws(sagemaker_settings, monkeypatch) -> sm.AWS:
    client = sm.AWS(offline_session())
    monkeypatch.setattr(clients, "_aws", client)
    return client


class Stubs:
    def __init__(self, client: sm.AWS) -> None:
        self.sagemaker = Stubber(client.sagemaker)
        self.logs = Stubber(client.logs)

    def __enter__(self):
        self.sagemaker.activate()
        self.logs.activate()
        return self

    def __exit__(self, *exc):
        self.sagemaker.deactivate()
        self.logs.deactivate()

    def assert_done(self):
        self.sagemaker.assert_no_pending_responses()
        self.logs.assert_no_pending_responses()


@pytest.fixture
def stubs(fake_aws):
    with Stubs(fake_aws) as stubs:
        yield stubs


def instance(name: str = "ml.g5.xlarge") -> InstanceType:
    # Transactional tests flush the seeded catalogue; everything else finds the migration's rows.
    defaults = {
        "ml.g5.xlarge": {"gpu_type": "NVIDIA A10G", "gpu_count": 1, "gpu_memory_gib": 24},
        "ml.g4dn.xlarge": {"gpu_type": "NVIDIA T4", "gpu_count": 1, "gpu_memory_gib": 16},
        "ml.m5.xlarge": {},
    }[name]
    defaults.update(vcpus=4, memory_gib=16)
    price = {"ml.g5.xlarge": "1.4080", "ml.g4dn.xlarge": "0.7364", "ml.m5.xlarge": "0.2300"}[name]
    found, _ = InstanceType.objects.get_or_create(
        name=name, defaults={**defaults, "price_per_hour_usd": price, "price_date": "2025-01-01"}
    )
    return found


def sagemaker_job(owner, *, name="Proverbs on SageMaker", running=True, **fields):
    """A SageMaker job; `running` ones were submitted already (as the poller finds them)."""
    values = {
        "backend": Backend.SAGEMAKER,
        "instance_type": instance(fields.pop("instance", "ml.g5.xlarge")),
        "max_cost_usd": Decimal("10.00"),
        "name": name,
    }
    values.update(fields)
    job = make_job(owner, **values)
    if running:
        job.sagemaker_job_name = sm.job_name(job)
        job.sagemaker_status = "InProgress"
        job.sagemaker_secondary_status = "Starting"
        if "status" not in fields:
            job.status = JobStatus.PREPARING
        job.started_at = datetime.now(UTC)
        job.save()
    return job


def description(job_name: str, status: str = "InProgress", secondary: str = "Training", **extra) -> dict:
    """A DescribeTrainingJob response (valid for the output shape; Stubber checks)."""
    now = extra.pop("now", datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
    response = {
        "TrainingJobName": job_name,
        "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/{job_name}",
        "TrainingJobStatus": status,
        "SecondaryStatus": secondary,
        "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": "image"},
        "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 25568},
        "CreationTime": now - timedelta(minutes=10),
        "LastModifiedTime": now,
        "ModelArtifacts": {"S3ModelArtifacts": ""},
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/users/1/jobs/1/"},
    }
    if secondary not in ("Starting", "Pending", "Downloading"):
        response["TrainingStartTime"] = now - timedelta(minutes=8)
    response.update(extra)
    return response


def log_event(message: str, ms: int = 1_700_000_000_000) -> dict:
    return {"timestamp": ms, "message": message, "ingestionTime": ms}


def progress_line(event: str, **fields) -> str:
    from training_scripts.progress import format_event

    return format_event(event, **fields)


class StubAccount:
    """Training jobs and log streams of one fake account, answering at the boto client boundary."""

    def __init__(self, session: boto3.session.Session) -> None:
        self.calls: Counter = Counter()
        self.jobs: dict[str, dict] = {}
        self.streams: dict[str, list[dict]] = {}
        self.throttle: Counter = Counter()  # operation -> how many of its next calls are throttled
        self.clock = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
        self.requests: list[tuple[str, dict]] = []
        session.events.register("before-parameter-build.*.*", self._remember_params)
        session.events.register("before-call.sagemaker.*", self._answer)
        session.events.register("before-call.cloudwatch-logs.*", self._answer)

    # --- the state ---

    def add_job(self, name: str, secondary: str = "Training", status: str = "InProgress", lines=()) -> None:
        self.jobs[name] = description(name, status, secondary, now=self.clock)
        if lines:
            self.streams[f"{name}/algo-1-1700000000"] = [
                log_event(line, 1_700_000_000_000 + i) for i, line in enumerate(lines)
            ]

    def change(self, name: str, status: str, secondary: str, **extra) -> None:
        self.tick()
        job = self.jobs[name]
        job.update(TrainingJobStatus=status, SecondaryStatus=secondary, LastModifiedTime=self.clock, **extra)
        if secondary not in ("Starting", "Pending", "Downloading"):
            job.setdefault("TrainingStartTime", self.clock - timedelta(minutes=8))

    def log(self, name: str, *lines: str) -> None:
        stream = self.streams.setdefault(f"{name}/algo-1-1700000000", [])
        start = len(stream)
        stream.extend(log_event(line, 1_700_000_000_000 + start + i) for i, line in enumerate(lines))

    def tick(self, seconds: int = 1) -> None:
        self.clock += timedelta(seconds=seconds)

    # --- the boundary ---

    def _remember_params(self, params, context, model, **kwargs):
        context["stub_params"] = dict(params)

    def _answer(self, model, context, **kwargs):
        operation = model.name
        params = context.get("stub_params", {})
        self.calls[operation] += 1
        self.requests.append((operation, params))
        if self.throttle[operation] > 0:
            self.throttle[operation] -= 1
            return self._error("ThrottlingException", "Rate exceeded", 400)
        handler = getattr(self, f"_{operation}", None)
        if handler is None:
            raise AssertionError(f"StubAccount does not answer {operation}")
        response = handler(params)
        if isinstance(response, tuple):
            return response
        if model.output_shape is not None:  # StopTrainingJob answers nothing
            validate_parameters(response, model.output_shape)
        return AWSResponse(None, 200, {}, None), response

    @staticmethod
    def _error(code: str, message: str, status: int):
        parsed = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return AWSResponse(None, status, {}, None), parsed

    def _ListTrainingJobs(self, params):
        after = params.get("LastModifiedTimeAfter")
        found = [
            job
            for job in self.jobs.values()
            if (after is None or job["LastModifiedTime"] > after)
            and params.get("NameContains", "") in job["TrainingJobName"]
        ]
        found.sort(key=lambda job: job["CreationTime"], reverse=True)
        start = int(params.get("NextToken") or 0)
        size = params.get("MaxResults", 10)
        page = found[start : start + size]
        response = {
            "TrainingJobSummaries": [
                {
                    "TrainingJobName": job["TrainingJobName"],
                    "TrainingJobArn": job["TrainingJobArn"],
                    "CreationTime": job["CreationTime"],
                    "LastModifiedTime": job["LastModifiedTime"],
                    "TrainingJobStatus": job["TrainingJobStatus"],
                    "SecondaryStatus": job["SecondaryStatus"],
                }
                for job in page
            ]
        }
        if start + size < len(found):
            response["NextToken"] = str(start + size)
        return response

    def _DescribeTrainingJob(self, params):
        job = self.jobs.get(params["TrainingJobName"])
        if job is None:
            return self._error("ValidationException", "Requested resource not found.", 400)
        return dict(job)

    def _CreateTrainingJob(self, params):
        name = params["TrainingJobName"]
        if name in self.jobs:
            return self._error("ResourceInUse", f"Training job names must be unique: {name}", 400)
        self.add_job(name, "Starting")
        self.jobs[name]["OutputDataConfig"] = params["OutputDataConfig"]
        self.jobs[name]["ResourceConfig"] = params["ResourceConfig"]
        self.jobs[name].pop("TrainingStartTime", None)
        return {"TrainingJobArn": self.jobs[name]["TrainingJobArn"]}

    def _StopTrainingJob(self, params):
        self.change(params["TrainingJobName"], "Stopping", "Stopping")
        return {}

    def _DescribeLogStreams(self, params):
        prefix = params.get("logStreamNamePrefix", "")
        names = sorted(name for name in self.streams if name.startswith(prefix))
        if not names and not self.streams:
            return self._error("ResourceNotFoundException", "The specified log group does not exist.", 400)
        return {"logStreams": [{"logStreamName": name, "creationTime": 1_700_000_000_000} for name in names]}

    def _GetLogEvents(self, params):
        stream = self.streams.get(params["logStreamName"])
        if stream is None:
            return self._error("ResourceNotFoundException", "The specified log stream does not exist.", 400)
        start = int((params.get("nextToken") or "f/0").split("/")[1])
        limit = params.get("limit", 10000)
        events = stream[start : start + limit]
        end = start + len(events)
        return {"events": events, "nextForwardToken": f"f/{end}", "nextBackwardToken": f"b/{start}"}


@pytest.fixture
def account(fake_aws) -> StubAccount:
    return StubAccount(fake_aws.session)


# --- the stub account itself -------------------------------------------------------------------------


def test_the_stub_account_answers_only_requests_that_match_the_api_model(account, fake_aws):
    from botocore.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        fake_aws.sagemaker.describe_training_job(TrainingJobName="llmtuner-job-1-1", Tags=[])
    assert account.calls == Counter()


def test_the_stub_account_pages_lists_and_counts_calls(account, fake_aws):
    for i in range(250):
        account.add_job(f"llmtuner-job-{i}-1")
    first = fake_aws.sagemaker.list_training_jobs(MaxResults=100, NameContains="llmtuner-job-")
    second = fake_aws.sagemaker.list_training_jobs(
        MaxResults=100, NameContains="llmtuner-job-", NextToken=first["NextToken"]
    )
    assert len(first["TrainingJobSummaries"]) == 100
    assert len(second["TrainingJobSummaries"]) == 100
    assert account.calls["ListTrainingJobs"] == 2


def test_nothing_leaves_the_machine_without_a_stub(fake_aws):
    with pytest.raises(NetworkRefused):
        fake_aws.client("sts").get_caller_identity()
