"""The same flows with S3 as the default storage, through moto (requests checked against AWS API models)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import boto3
import pytest
from moto import mock_aws

from datasets_app.models import Dataset
from datasets_app.tasks import prepare_dataset
from datasets_app.tests.conftest import SURVEY_HEADER
from datasets_app.tests.test_upload import post_upload
from llmtuner import storage

pytestmark = pytest.mark.django_db

BUCKET = "llmtuner-test-datasets"


@pytest.fixture
def s3(settings, fake_aws_credentials):
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        settings.STORAGES = {
            **settings.STORAGES,
            "default": {
                "BACKEND": "storages.backends.s3.S3Storage",
                "OPTIONS": {
                    "bucket_name": BUCKET,
                    "region_name": "us-east-1",
                    "default_acl": "private",
                    "file_overwrite": False,
                    "querystring_auth": True,
                    "querystring_expire": 600,
                },
            },
        }
        assert storage.is_s3()
        yield client


def keys(client) -> list[str]:
    return sorted(obj["Key"] for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_upload_prepare_browse_download_delete_on_s3(
    s3, owner, owner_client, survey_bytes, django_capture_on_commit_callbacks
):
    post_upload(owner_client, survey_bytes, "survey.csv")
    dataset = Dataset.objects.get()
    prefix = f"users/{owner.pk}/datasets/{dataset.uuid}/"
    assert keys(s3) == [prefix + "raw"]
    assert s3.get_object(Bucket=BUCKET, Key=prefix + "raw")["Body"].read() == survey_bytes

    prepare_dataset(dataset.pk)

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY, dataset.error
    assert keys(s3) == [prefix + "raw", prefix + "train.jsonl", prefix + "validation.jsonl"]
    assert (dataset.train_file, dataset.validation_file) == (
        prefix + "train.jsonl",
        prefix + "validation.jsonl",
    )
    assert "Māori Authorities" in owner_client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert "Value: 1,234" in owner_client.get(f"/datasets/{dataset.pk}/samples/").content.decode()

    download = owner_client.get(f"/datasets/{dataset.pk}/download/train/")
    assert download.status_code == 302
    url = urlparse(download.url)
    assert url.path.endswith(f"/{prefix}train.jsonl")
    query = parse_qs(url.query)
    assert query["response-content-disposition"] == ['attachment; filename="survey-train.jsonl"']
    assert "X-Amz-Signature" in query or "Signature" in query

    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(f"/datasets/{dataset.pk}/delete/")

    assert keys(s3) == []


def test_preparing_again_on_s3_replaces_the_outputs(s3, owner_client, survey_bytes):
    post_upload(owner_client, survey_bytes)
    dataset = Dataset.objects.get()
    prepare_dataset(dataset.pk)
    dataset.refresh_from_db()

    owner_client.post(
        f"/datasets/{dataset.pk}/prepare/",
        {
            "format": "csv",
            "txt_mode": "line",
            "mapping": "text:Industry_name_NZSIOC",
            "validation_percent": "0",
        },
    )
    prepare_dataset(dataset.pk)

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY
    assert [item["text"] for item in dataset.preview] == [
        "All industries",
        "Māori Authorities",
        "Tāmaki Makaurau",
    ]
    assert keys(s3) == sorted([dataset.raw_file, dataset.train_file, dataset.validation_file])


def test_failed_preparation_leaves_no_object_on_s3(s3, owner_client):
    post_upload(owner_client, SURVEY_HEADER.encode() + b"\r\n")
    dataset = Dataset.objects.get()
    assert len(keys(s3)) == 1

    prepare_dataset(dataset.pk)

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.FAILED
    assert "no data rows" in dataset.error
    assert keys(s3) == []


def test_a_refused_upload_leaves_no_object_on_s3(s3, owner_client):
    response = post_upload(owner_client, b"\x00\x01\x02binary", "data.csv")

    assert response.status_code == 400
    assert keys(s3) == []
    assert Dataset.objects.count() == 0
