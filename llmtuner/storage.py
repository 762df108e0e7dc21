"""The one module that touches stored files (datasets, job data, models, logs): S3 or local media,
and the s3:// objects other services leave us (a SageMaker job's model.tar.gz).

Everything streams: saving hands the file object to the storage (S3 does a
multipart upload), reading returns a stream (an S3 GET body, or an open local
file) rather than django-storages' `open()`, which would first download the
whole object. Keys are built by the caller from the dataset's prefix; the
client's file name never becomes part of one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.http import FileResponse, HttpResponse, HttpResponseRedirect

READ_CHUNK = 256 * 1024
# What a storage raises when it does not do what was asked: S3's error responses, a dropped
# connection or timeout, a failed multipart upload; a local disk that is full or unreadable.
STORAGE_ERRORS = (ClientError, BotoCoreError, S3UploadFailedError, OSError)


def describe(error: BaseException) -> str:
    """One of STORAGE_ERRORS in a few words for the person concerned, without our internals
    (bucket names, endpoints, paths)."""
    if isinstance(error, ClientError):
        return error.response.get("Error", {}).get("Code") or "an error"
    cause = error.__cause__ if isinstance(error, S3UploadFailedError) else None
    if isinstance(cause, ClientError):
        return describe(cause)
    return type(error).__name__


def _storage() -> Storage:
    return storages["default"]


def is_s3(storage: Storage | None = None) -> bool:
    return hasattr(storage or _storage(), "bucket")


def s3_uri(key: str) -> str:
    """`s3://bucket/name` of a stored key (storage on S3): where a SageMaker channel reads it."""
    storage = _storage()
    return f"s3://{storage.bucket_name}/{storage._normalize_name(key)}"


def _s3_object(storage, key: str):
    name = storage._normalize_name(key) if hasattr(storage, "_normalize_name") else key
    return storage.bucket.Object(name)


def save(key: str, content: BinaryIO | File) -> str:
    """Store `content` under `key` (or a free name next to it); returns the key actually used."""
    if not isinstance(content, File):
        content = File(content, name=os.path.basename(key))
    return _storage().save(key, content)


def save_path(key: str, path: Path) -> str:
    with open(path, "rb") as handle:
        return save(key, File(handle, name=os.path.basename(key)))


@contextlib.contextmanager
def open_stream(key: str, offset: int = 0) -> Iterator[BinaryIO]:
    """A binary stream of the stored file from `offset`, read as it is consumed."""
    storage = _storage()
    if is_s3(storage):
        extra = {"Range": f"bytes={offset}-"} if offset else {}
        body = _s3_object(storage, key).get(**extra)["Body"]
        try:
            yield body
        finally:
            body.close()
        return
    with open(storage.path(key), "rb") as handle:
        if offset:
            handle.seek(offset)
        yield handle


def iter_lines(key: str, offset: int = 0) -> Iterator[bytes]:
    """The stored file's lines from byte `offset`, without line ends; stop early to read no further."""
    with open_stream(key, offset) as stream:
        pending = b""
        while True:
            chunk = stream.read(READ_CHUNK)
            if not chunk:
                break
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            yield from lines
        if pending:
            yield pending


def exists(key: str) -> bool:
    return bool(key) and _storage().exists(key)


def delete(keys: list[str]) -> None:
    storage = _storage()
    for key in keys:
        if key:
            storage.delete(key)


def size(key: str) -> int:
    return _storage().size(key)


def list_keys(prefix: str) -> list[str]:
    """Every stored key under `prefix` (a folder path ending in /), as the keys we open them by."""
    storage = _storage()
    if is_s3(storage):
        name = storage._normalize_name(prefix) if hasattr(storage, "_normalize_name") else prefix
        # The bucket lists whole object names: the storage's location comes off again.
        location = (getattr(storage, "location", "") or "").strip("/")
        location = f"{location}/" if location else ""
        return sorted(obj.key.removeprefix(location) for obj in storage.bucket.objects.filter(Prefix=name))
    root = Path(storage.path(prefix))
    if not root.is_dir():
        return []
    base = Path(storage.path(""))
    return sorted(str(path.relative_to(base)) for path in root.rglob("*") if path.is_file())


def delete_prefix(prefix: str) -> None:
    """Remove every object under `prefix`, and for local media its empty folders."""
    if not prefix.endswith("/") or prefix.count("/") < 3:
        raise ValueError(f"refusing to delete under {prefix!r}")
    storage = _storage()
    if is_s3(storage):
        name = storage._normalize_name(prefix) if hasattr(storage, "_normalize_name") else prefix
        storage.bucket.objects.filter(Prefix=name).delete()
        return
    for key in list_keys(prefix):
        storage.delete(key)
    folder = Path(storage.path(prefix))
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3://bucket/key URI; ValueError for anything else."""
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not bucket or not key:
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    return bucket, key


def uri_exists(uri: str) -> bool:
    bucket, key = parse_s3_uri(uri)
    try:
        _s3_client().head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return False
        raise
    return True


@contextlib.contextmanager
def open_uri(uri: str) -> Iterator[BinaryIO]:
    """A binary stream of the object at an s3:// URI (any bucket), read as it is consumed."""
    bucket, key = parse_s3_uri(uri)
    body = _s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    try:
        yield body
    finally:
        body.close()


def _s3_client():
    # The default storage's own connection when it is S3 (same endpoint, credentials and
    # retries as every other file); otherwise a client on the same settings it would use.
    storage = _storage()
    if is_s3(storage):
        return storage.connection.meta.client
    return boto3.client("s3", endpoint_url=settings.AWS_S3_ENDPOINT_URL, region_name=settings.AWS_REGION)


def download_response(key: str, filename: str) -> HttpResponse:
    """Send the stored file as an attachment: a short-lived signed S3 URL, or a streamed local file."""
    storage = _storage()
    if is_s3(storage):
        safe = filename.replace('"', "")
        url = storage.url(key, parameters={"ResponseContentDisposition": f'attachment; filename="{safe}"'})
        return HttpResponseRedirect(url)
    return FileResponse(
        open(storage.path(key), "rb"),  # noqa: SIM115 - FileResponse closes it
        as_attachment=True,
        filename=filename,
        content_type="application/jsonl",
    )
