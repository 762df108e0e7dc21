"""What the jobs pages do to jobs, beside the lifecycle: launch, retry, delete, download.

State changes of a running job stay in jobs.lifecycle; these functions make
new queued rows (and hand them to their backend after commit), remove final
ones, and read a finished job's stored model.
"""

from __future__ import annotations

import logging
import posixpath
import zipfile
from collections.abc import Iterator
from typing import Any

from django.core.files.storage import storages
from django.db import transaction

from jobs.backends import queue_job
from jobs.estimate import Estimate
from jobs.models import FINAL_STATES, JobStatus, TrainingJob
from llmtuner import storage

logger = logging.getLogger(__name__)
RETRYABLE_STATES = frozenset({JobStatus.FAILED, JobStatus.STOPPED})
ZIP_CHUNK = 1024 * 1024
# Weights are already dense; compressing them costs CPU for nothing.
STORED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".zip", ".gz")


class ActionError(Exception):
    """A refused action, with a message for the job's owner."""


def launch_job(owner, *, estimate: Estimate | None = None, **fields: Any) -> TrainingJob:
    """Save a job as queued and hand it to its backend once the row is committed."""
    if estimate is not None:
        fields.setdefault("estimated_seconds", estimate.seconds)
        fields.setdefault("estimated_cost_usd", estimate.cost_usd)
    with transaction.atomic():
        job = TrainingJob.objects.create(owner=owner, status=JobStatus.QUEUED, **fields)
        queue_job(job)
    return job


def retry_job(job: TrainingJob) -> TrainingJob:
    """A new queued job with the same settings as a failed or stopped one (attempt + 1)."""
    if job.status not in RETRYABLE_STATES:
        raise ActionError(
            f"Only a failed or stopped job can be retried; this one is {job.get_status_display()}."
        )
    dataset = job.dataset
    if dataset is None:
        raise ActionError("Its dataset was deleted: clone it and choose another dataset.")
    if not dataset.is_ready:
        raise ActionError(f"Its dataset “{dataset.name}” is not ready.")
    return launch_job(
        job.owner,
        name=job.name,
        dataset=dataset,
        base_model=job.base_model,
        backend=job.backend,
        method=job.method,
        hyperparameters=dict(job.hyperparameters),
        instance_type=job.instance_type,
        instance_count=job.instance_count,
        use_spot=job.use_spot,
        max_cost_usd=job.max_cost_usd,
        estimated_seconds=job.estimated_seconds,
        estimated_cost_usd=job.estimated_cost_usd,
        attempt=job.attempt + 1,
    )


def delete_job(job: TrainingJob) -> None:
    """Remove a final job with its stored model, outputs and log."""
    if job.status not in FINAL_STATES:
        raise ActionError("A job that is still running cannot be deleted: stop it first.")
    # The model, the outputs and the full log all live under the job's prefix.
    storage.delete_prefix(job.storage_prefix() + "/")
    # The row goes only if nobody restarted it meanwhile.
    TrainingJob.objects.filter(pk=job.pk, status__in=FINAL_STATES).delete()


def model_files(job: TrainingJob) -> list[tuple[str, str]]:
    """(storage key, name in the zip) of every file of a completed job's tuned model."""
    if job.status != JobStatus.COMPLETED or not job.model_prefix:
        return []
    prefix = job.model_prefix.rstrip("/") + "/"
    keys = storage.list_keys(prefix)
    location = _storage_location()
    files = []
    for key in keys:
        relative = key[len(location) :] if location and key.startswith(location) else key
        if not relative.startswith(prefix):
            continue
        name = posixpath.normpath(relative[len(prefix) :])
        if name.startswith(("../", "/")) or name == "..":
            continue
        files.append((relative, name))
    return files


def iter_zip(files: list[tuple[str, str]], folder: str) -> Iterator[bytes]:
    """A zip of stored files, produced chunk by chunk as it is sent: never whole in memory or on disk."""
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", allowZip64=True) as archive:
        for key, name in files:
            size = storages["default"].size(key)
            info = zipfile.ZipInfo(f"{folder}/{name}")
            info.compress_type = (
                zipfile.ZIP_STORED if name.endswith(STORED_SUFFIXES) else zipfile.ZIP_DEFLATED
            )
            info.file_size = size
            info.external_attr = 0o644 << 16
            with storage.open_stream(key) as source, archive.open(info, "w") as target:
                while chunk := source.read(ZIP_CHUNK):
                    target.write(chunk)
                    yield from sink.drain()
            yield from sink.drain()
    yield from sink.drain()


class _Sink:
    """A write-only, unseekable file for ZipFile, emptied after each chunk.

    (Unseekable, so zipfile writes each member's sizes in a data descriptor after it.)
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def drain(self) -> Iterator[bytes]:
        chunks, self.chunks = self.chunks, []
        yield from (chunk for chunk in chunks if chunk)


def _storage_location() -> str:
    location = getattr(storages["default"], "location", "") or ""
    # The local file storage's location is a filesystem path; its keys are relative already.
    return "" if location.startswith("/") else (location.rstrip("/") + "/" if location else "")
