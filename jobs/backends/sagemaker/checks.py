"""Setup checks (`manage.py check_sagemaker`): credentials, role, buckets and training quotas."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError
from django.conf import settings

from jobs import pricing
from jobs.backends.sagemaker.clients import aws
from jobs.backends.sagemaker.config import bucket_name, is_configured, unavailable_reason
from jobs.backends.sagemaker.errors import NO_CREDENTIALS, error_code, error_message, explain_client_error
from jobs.backends.sagemaker.quotas import training_quotas


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
