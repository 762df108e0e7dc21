"""Download links to S3 are presigned with Signature Version 4, the only one every region accepts.

The `s3` fixture configures the storage the way an operator's OPTIONS would, without a word on
signing: the project's settings must choose SigV4 for it (SigV2 links were what a review found).
"""

from __future__ import annotations

import io
from urllib.parse import parse_qs, urlparse

import pytest

from datasets_app.models import Dataset
from datasets_app.tasks import prepare_dataset
from datasets_app.tests.test_s3 import s3  # noqa: F401 - the fixture
from datasets_app.tests.test_upload import post_upload
from jobs.models import JobStatus, TrainingJob
from jobs.tests.conftest import make_job
from llmtuner import storage

pytestmark = pytest.mark.django_db

SIGV2_PARAMETERS = {"Signature", "AWSAccessKeyId", "Expires"}


def presigned_query(response) -> dict[str, list[str]]:
    assert response.status_code == 302, response.status_code
    return parse_qs(urlparse(response.url).query)


def assert_signed_with_sigv4(query: dict[str, list[str]]) -> None:
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["600"]
    assert "X-Amz-Signature" in query
    assert SIGV2_PARAMETERS & query.keys() == set()


def test_a_dataset_download_link_is_signed_with_sigv4(s3, owner_client, survey_bytes):  # noqa: F811
    post_upload(owner_client, survey_bytes)
    dataset = Dataset.objects.get()
    prepare_dataset(dataset.pk)

    download = owner_client.get(f"/datasets/{dataset.pk}/download/train/")

    query = presigned_query(download)
    assert_signed_with_sigv4(query)
    assert query["X-Amz-Credential"][0].endswith("/us-east-1/s3/aws4_request")
    assert query["response-content-disposition"] == ['attachment; filename="survey-train.jsonl"']


def test_a_job_log_download_link_is_signed_with_sigv4(s3, owner, owner_client):  # noqa: F811
    job = make_job(owner, status=JobStatus.COMPLETED)
    log_key = storage.save(f"{job.storage_prefix()}/logs/train.log", io.BytesIO(b"step 1\n"))
    TrainingJob.objects.filter(pk=job.pk).update(log_key=log_key)

    assert_signed_with_sigv4(presigned_query(owner_client.get(f"/jobs/{job.pk}/log/")))


def test_a_link_in_another_region_is_signed_for_that_region_on_its_own_host(s3, settings):  # noqa: F811
    options = settings.STORAGES["default"]["OPTIONS"]
    settings.STORAGES = {**settings.STORAGES, "default": {**settings.STORAGES["default"]}}
    settings.STORAGES["default"]["OPTIONS"] = {**options, "region_name": "eu-west-1"}

    url = urlparse(storage.download_response("users/1/datasets/x/train.jsonl", "train.jsonl").url)

    assert url.hostname == f"{options['bucket_name']}.s3.eu-west-1.amazonaws.com"
    query = parse_qs(url.query)
    assert_signed_with_sigv4(query)
    assert query["X-Amz-Credential"][0].endswith("/eu-west-1/s3/aws4_request")
