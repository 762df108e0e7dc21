# ruff: noqa: F811 (the fixtures imported from test_sagemaker_support are redefined as arguments)
"""manage.py check_sagemaker: credentials, role, bucket and quotas, each with a ✓ or ✗ line."""

from __future__ import annotations

import io
import json

import boto3
import pytest
from botocore.stub import Stubber
from django.core.management import call_command
from django.core.management.base import CommandError
from moto import mock_aws

from jobs.backends import sagemaker as sm
from jobs.backends.sagemaker import clients
from jobs.tests.test_sagemaker_support import (  # noqa: F401 (fixtures)
    BUCKET,
    REGION,
    ROLE_ARN,
    fake_aws,
    refuse_network,
    sagemaker_settings,
)

pytestmark = pytest.mark.django_db

SAGEMAKER_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}


@pytest.fixture
def account(fake_aws):
    fake_aws.session.events.unregister("before-send", refuse_network)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield fake_aws


def make_role(trust: dict = SAGEMAKER_TRUST) -> None:
    boto3.client("iam", region_name=REGION).create_role(
        RoleName="llmtuner-sagemaker", AssumeRolePolicyDocument=json.dumps(trust)
    )


def quotas(client: sm.AWS, values: dict[str, float]) -> Stubber:
    stubber = Stubber(client.client("service-quotas"))
    stubber.add_response(
        "list_service_quotas",
        {"Quotas": [{"QuotaName": name, "Value": value} for name, value in values.items()]},
        {"ServiceCode": "sagemaker", "MaxResults": 100},
    )
    stubber.activate()
    return stubber


def run() -> str:
    out = io.StringIO()
    call_command("check_sagemaker", stdout=out)
    return out.getvalue()


def run_failing() -> tuple[str, str]:
    out = io.StringIO()
    with pytest.raises(CommandError) as failure:
        call_command("check_sagemaker", stdout=out)
    return out.getvalue(), str(failure.value)


def test_a_working_setup_passes_every_check_and_lists_the_quotas(account):
    make_role()
    quotas(
        account,
        {
            "ml.g5.xlarge for training job usage": 2.0,
            "ml.g5.xlarge for spot training job usage": 1.0,
            "ml.m5.xlarge for training job usage": 0.0,
            "ml.p4d.24xlarge for training job usage": 0.0,
            "Number of training jobs": 100.0,
        },
    )
    out = run()
    assert "✓ AWS credentials: arn:aws:sts::123456789012:user/moto (account 123456789012)" in out
    assert f"✓ Role: {ROLE_ARN} exists and SageMaker may assume it" in out
    assert f"✓ Bucket: s3://{BUCKET} is reachable and writable" in out
    assert "✓ Quota: ml.g5.xlarge for training job usage: 2 instances, spot: 1 instance" in out
    assert (
        "✗ Quota: ml.m5.xlarge for training job usage: 0 instances, spot: unknown (request an increase" in out
    )
    assert "✗ Quota: ml.g4dn.xlarge: no training quota found" in out
    assert out.rstrip().endswith("SageMaker is ready to run training jobs.")
    # The probe object was deleted again.
    assert "Contents" not in boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BUCKET)


def test_a_missing_role_fails(account):
    quotas(account, {"ml.g5.xlarge for training job usage": 1.0})
    out, error = run_failing()
    assert f"✗ Role: {ROLE_ARN} does not exist" in out
    assert error == "1 check failed: SageMaker cannot run jobs"


def test_a_role_sagemaker_may_not_assume_fails(account):
    make_role(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
    )
    quotas(account, {"ml.g5.xlarge for training job usage": 1.0})
    out, _ = run_failing()
    assert "its trust policy does not allow sagemaker.amazonaws.com" in out


def test_a_missing_bucket_fails(account, settings):
    make_role()
    settings.SAGEMAKER_BUCKET = "no-such-bucket"
    quotas(account, {"ml.g5.xlarge for training job usage": 1.0})
    out, _ = run_failing()
    assert "✗ Bucket: s3://no-such-bucket: 404" in out


def test_unreadable_quotas_are_reported_but_do_not_fail(account):
    make_role()
    stubber = Stubber(account.client("service-quotas"))
    stubber.add_client_error("list_service_quotas", service_error_code="AccessDeniedException")
    stubber.activate()
    out = run()
    assert (
        "✗ Quotas: could not read them (AccessDeniedException: ); allow servicequotas:ListServiceQuotas"
        in out
    )


def test_no_usable_quota_at_all_fails(account):
    make_role()
    quotas(account, {"ml.g5.xlarge for training job usage": 0.0})
    out, _ = run_failing()
    assert "✗ Quotas: no instance type of the catalogue may run a training job" in out


def test_missing_credentials_fail_first_and_say_how_to_set_them(sagemaker_settings, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setattr(clients, "_aws", sm.AWS(boto3.session.Session(region_name=REGION)))
    out, error = run_failing()
    assert "✗ No AWS credentials were found for the worker" in out
    assert "Role" not in out
    assert error == "1 check failed: SageMaker cannot run jobs"


def test_an_unconfigured_installation_says_what_to_set(account, settings):
    settings.SAGEMAKER_ROLE_ARN = ""
    quotas(account, {"ml.g5.xlarge for training job usage": 1.0})
    out, _ = run_failing()
    assert "✗ SageMaker is not configured: set SAGEMAKER_ROLE_ARN" in out
    assert "✗ Role: SAGEMAKER_ROLE_ARN is not set" in out
