"""S3 failing in the middle of an upload or a preparation: a clear message, nothing half-stored.

Faults are injected on moto's S3 through botocore's own event hooks on the storage's client:
an error response for one operation (the client raises exactly what AWS would make it raise),
or a dropped connection.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from django.core.files.storage import storages
from moto import mock_aws

from datasets_app.models import Dataset
from datasets_app.tasks import prepare_dataset
from datasets_app.tests.test_s3 import BUCKET, keys
from datasets_app.tests.test_upload import post_upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def bucket(settings, monkeypatch):
    """S3 as the default storage, on moto (as in test_s3.py)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        options = {"bucket_name": BUCKET, "region_name": "us-east-1", "default_acl": "private"}
        settings.STORAGES = {
            **settings.STORAGES,
            "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options},
        }
        yield client


def in_flight_multipart_uploads(client) -> list:
    return client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


class Fault:
    """Answer the n-th call (and later ones) of an S3 operation with an error."""

    def __init__(self, operation: str, code: str = "", status: int = 503, after: int = 0, connection=False):
        self.operation, self.code, self.status, self.after, self.connection = (
            operation,
            code,
            status,
            after,
            connection,
        )
        self.calls = 0
        self.lock = threading.Lock()  # multipart parts are sent from several threads

    def install(self) -> None:
        client = storages["default"].connection.meta.client
        client.meta.events.register(f"before-call.s3.{self.operation}", self)

    def __call__(self, **kwargs):
        with self.lock:
            self.calls += 1
            if self.calls <= self.after:
                return None
        if self.connection:
            raise EndpointConnectionError(endpoint_url=f"https://{BUCKET}.s3.amazonaws.com")
        error = {"Code": self.code, "Message": f"injected {self.code}"}
        return SimpleNamespace(status_code=self.status, headers={}), {
            "Error": error,
            "ResponseMetadata": {"HTTPStatusCode": self.status},
        }


def big_csv(megabytes: int) -> bytes:
    row = b"a line of text that is long enough to make the file grow quickly 0123456789\n"
    return b"text\n" + row * (megabytes * 1024 * 1024 // len(row) + 1)


UPLOAD_FAULTS = [
    pytest.param(Fault("PutObject", "SlowDown"), b"text\nhello\nworld\n", id="put-slow-down"),
    pytest.param(Fault("PutObject", "InternalError", 500), b"text\nhello\nworld\n", id="put-internal-error"),
    pytest.param(Fault("PutObject", "AccessDenied", 403), b"text\nhello\nworld\n", id="put-access-denied"),
    pytest.param(Fault("PutObject", connection=True), b"text\nhello\nworld\n", id="put-connection-lost"),
    pytest.param(Fault("UploadPart", "InternalError", 500, after=1), big_csv(9), id="multipart-part-2-fails"),
    pytest.param(Fault("CompleteMultipartUpload", "SlowDown"), big_csv(9), id="multipart-complete-fails"),
]


@pytest.mark.parametrize("fault,data", UPLOAD_FAULTS)
def test_an_s3_error_while_storing_an_upload_says_so_and_keeps_nothing(
    bucket,
    fault,
    data,
    owner_client,
    django_capture_on_commit_callbacks,
):
    fault.install()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post_upload(owner_client, data, "notes.csv")

    assert response.status_code == 400
    page = response.content.decode()
    assert "could not be stored" in page and "Nothing was kept" in page
    assert fault.calls >= 1
    assert Dataset.objects.count() == 0
    assert keys(bucket) == []
    assert in_flight_multipart_uploads(bucket) == []
    assert callbacks == []

    # Once S3 answers again, the same upload goes through.
    storages["default"].connection.meta.client.meta.events.unregister(
        f"before-call.s3.{fault.operation}", fault
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert post_upload(owner_client, data, "notes.csv").status_code == 302
    assert Dataset.objects.get().status == Dataset.Status.READY, Dataset.objects.get().error


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault("GetObject", "InternalError", 500), id="reading-the-upload"),
        pytest.param(Fault("PutObject", "SlowDown", after=0), id="writing-the-samples"),
        pytest.param(Fault("GetObject", connection=True), id="connection-lost-reading"),
    ],
)
def test_an_s3_error_while_preparing_fails_the_dataset_and_keeps_nothing(
    bucket,
    fault,
    owner_client,
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=False):
        assert post_upload(owner_client, b"text\nhello\nworld\n", "notes.csv").status_code == 302
    dataset = Dataset.objects.get()
    assert keys(bucket) == [dataset.raw_file]
    fault.install()

    prepare_dataset(dataset.pk)

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.FAILED
    assert "could not be read or written" in dataset.error and "upload it again" in dataset.error
    assert keys(bucket) == []
    assert owner_client.get(f"/datasets/{dataset.pk}/").status_code == 200


def test_when_s3_cannot_even_delete_the_dataset_still_ends_failed(
    bucket,
    owner_client,
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=False):
        post_upload(owner_client, b"text\nhello\nworld\n", "notes.csv")
    dataset = Dataset.objects.get()
    for operation in ("GetObject", "DeleteObjects", "DeleteObject", "ListObjectsV2"):
        Fault(operation, connection=True).install()

    prepare_dataset(dataset.pk)

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.FAILED  # not left "preparing" for half an hour
    assert dataset.can_prepare_again is False  # its upload is gone from its row: upload it again
