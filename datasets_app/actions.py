"""What happens to a dataset: created from an upload, prepared, prepared again, renamed, deleted.

Views, the Celery task and the import_dataset command call these and nothing
else. Each changes the row through the model's named methods and does its
side effects (stored objects, the queued task) after the commit.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.utils import timezone

from llmtuner import broker, scratch, storage
from llmtuner.text import storable

from . import quota
from .mapping import MappingError
from .models import Dataset
from .preparation import OutputTooLarge, PreparationError, PrepareOptions, inspect_file, prepare

logger = logging.getLogger(__name__)

UNEXPECTED_FAILURE = (
    "Preparing this dataset failed because of a problem on our side, not in your file. "
    "Please upload it again; if it keeps failing, tell us."
)
SAMPLES_PER_PAGE = 25


class PreparationCancelled(Exception):
    """The dataset was deleted (or prepared again) while this preparation ran: stop, keep nothing."""


@dataclass(frozen=True)
class ReadOptions:
    """How a file is read; the same four choices in the upload form, the dataset page and the command."""

    format: str = Dataset.Format.AUTO
    txt_mode: str = Dataset.TxtMode.LINE
    mapping: str = ""
    validation_fraction: float = 0.05


def max_upload_bytes() -> int:
    return settings.DATASET_MAX_UPLOAD_MB * 1024 * 1024


def prepare_options(dataset: Dataset, max_output_bytes: int | None = None) -> PrepareOptions:
    return PrepareOptions(
        format=dataset.format,
        txt_mode=dataset.txt_mode,
        mapping=dataset.mapping,
        validation_fraction=dataset.validation_fraction,
        max_decompressed_bytes=settings.DATASET_MAX_DECOMPRESSED_MB * 1024 * 1024,
        tokenizer_path=settings.DATASET_TOKENIZER,
        max_output_bytes=max_output_bytes,
    )


def check_file(stream, filename: str, options: ReadOptions) -> dict[str, Any]:
    """A quick look at the first rows: raises PreparationError (MappingError for the mapping) if unusable."""
    return inspect_file(
        stream, filename, format=options.format, txt_mode=options.txt_mode, mapping=options.mapping
    )


def default_name(filename: str) -> str:
    stem = Path(filename or "dataset").name
    for suffix in (".gz", ".csv", ".tsv", ".tab", ".json", ".jsonl", ".ndjson", ".txt"):
        stem = stem.removesuffix(suffix).removesuffix(suffix.upper())
    return (stem.strip() or "Dataset")[:200]


def create_dataset(
    owner,
    upload: File,
    original_filename: str,
    options: ReadOptions,
    name: str = "",
    queue: bool = True,
) -> Dataset:
    """Check the upload's first rows, store it under the owner's prefix and save the row (queued).

    Raises PreparationError before anything is stored when the file is plainly
    unusable (empty, binary, unsupported, a mapping naming a missing column),
    and its QuotaExceeded when it does not fit in the owner's storage quota.
    With `queue`, `prepare_dataset` is sent after the commit; without, the
    caller runs `run_preparation` itself.
    """
    original_filename = Path(original_filename or "upload").name[:255]
    if not upload.size:
        raise PreparationError("The file is empty.")
    quota.check_upload(owner.pk, upload.size)
    upload.seek(0)
    seen = check_file(upload, original_filename, options)
    upload.seek(0)
    dataset = Dataset(
        owner=owner,
        name=(name or "").strip()[:200] or default_name(original_filename),
        original_filename=original_filename,
        format=options.format,
        txt_mode=options.txt_mode,
        mapping=options.mapping.strip(),
        validation_fraction=options.validation_fraction,
        size_bytes=upload.size,
        stored_bytes=upload.size,
    )
    _show_first_look(dataset, seen)
    try:
        key = storage.save(dataset.storage_prefix + "raw", upload)
    except storage.STORAGE_ERRORS as error:
        logger.warning("storing an upload under %s failed: %r", dataset.storage_prefix, error)
        _remove_quietly(dataset.storage_prefix)
        raise PreparationError(
            f"The file could not be stored: our file storage did not answer ({storage.describe(error)}). "
            "Nothing was kept; please upload it again in a moment."
        ) from error
    try:
        with transaction.atomic():
            dataset.raw_file = key
            dataset.save()
            if queue:
                _queue_preparation(dataset)
    except BaseException:
        _remove_quietly(dataset.storage_prefix)
        raise
    return dataset


def _show_first_look(dataset: Dataset, seen: dict[str, Any]) -> None:
    """Until preparation is done, the page shows what the first rows look like with these choices."""
    dataset.stats = storable(
        {key: seen[key] for key in ("format", "encoding", "columns", "mapping", "shape")}
    )
    dataset.preview = storable(seen["samples"])


def _queue_preparation(dataset: Dataset) -> None:
    from .tasks import prepare_dataset

    task_id = str(uuid.uuid4())
    dataset.queue_preparation(task_id)
    # The id is on the row before the message exists; the message leaves after commit. If the
    # broker is down, the dataset stays queued and `resend_lost_preparations` sends it later.
    broker.send_on_commit(prepare_dataset, (dataset.pk,), task_id)  # routed to "datasets"


def resend_lost_preparations(now: datetime | None = None) -> list[int]:
    """Queue again the datasets waiting for a preparation task the broker lost (see jobs' reaper)."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.QUEUED_JOB_RESEND_SECONDS)
    waiting = list(
        Dataset.objects.filter(status=Dataset.Status.UPLOADED, updated__lt=cutoff).values_list(
            "pk", "task_id"
        )
    )
    if not waiting:
        return []
    held = broker.messages_in_broker()
    if held is None:
        return []
    resent = []
    for dataset_id, task_id in waiting:
        if task_id and task_id in held:
            continue
        with transaction.atomic():
            dataset = (
                Dataset.objects.select_for_update()
                .filter(pk=dataset_id, status=Dataset.Status.UPLOADED, task_id=task_id)
                .first()
            )
            if dataset is None:
                continue
            _queue_preparation(dataset)
        logger.warning("dataset %s was queued but not in the broker; sent again", dataset_id)
        resent.append(dataset_id)
    return resent


def prepare_again(dataset: Dataset, options: ReadOptions, queue: bool = True) -> None:
    """New reading choices for a stored upload: check them on its first rows, then queue a preparation."""
    if not dataset.can_prepare_again:
        raise PreparationError("This dataset is being prepared already; wait for it to finish.")
    try:
        with storage.open_stream(dataset.raw_file) as stream:
            seen = check_file(stream, dataset.original_filename, options)
    except storage.STORAGE_ERRORS as error:
        raise PreparationError(
            f"The uploaded file could not be read: our file storage did not answer "
            f"({storage.describe(error)}). Please try again in a moment."
        ) from error
    dataset.format = options.format
    dataset.txt_mode = options.txt_mode
    dataset.mapping = options.mapping.strip()
    dataset.validation_fraction = options.validation_fraction
    _show_first_look(dataset, seen)
    with transaction.atomic():
        if queue:
            _queue_preparation(dataset)
        else:
            dataset.queue_preparation("")


def run_preparation(dataset_id: int, on_progress: Callable[[int], None] | None = None) -> Dataset | None:
    """Claim a queued dataset and prepare it; None when there was nothing to claim, or it went meanwhile.

    A PreparationError (the file's fault, or samples past the owner's quota)
    fails the dataset with its message and removes its stored files, and so
    does the task's time limit. Anything else fails it with a generic message,
    removes the files too, and is raised again for the logs. A dataset deleted
    (or prepared again) meanwhile is noticed at the next progress checkpoint:
    the work stops and leaves nothing behind.
    """
    dataset = Dataset.claim_for_preparation(dataset_id)
    if dataset is None:
        return None

    def progress(rows: int) -> None:
        if not dataset.record_progress(rows):
            raise PreparationCancelled
        if on_progress is not None:
            on_progress(rows)

    with scratch.task_folder(f"dataset-{dataset.pk}-") as folder:
        try:
            outputs = _prepare_into(dataset, folder, progress)
        except PreparationCancelled:
            _forget_if_gone(dataset)
            return None
        except OutputTooLarge as exc:
            _fail(dataset, str(quota.samples_too_large(dataset, exc.limit)))
            return dataset
        except PreparationError as exc:
            _fail(dataset, str(exc))
            return dataset
        except SoftTimeLimitExceeded:
            _fail(dataset, time_limit_message())
            return dataset
        except storage.STORAGE_ERRORS as exc:
            logger.warning("preparing dataset %s: the storage failed: %r", dataset.pk, exc)
            _fail(
                dataset,
                "The dataset's files could not be read or written: our file storage did not answer "
                f"({storage.describe(exc)}). Nothing was kept; please upload it again.",
            )
            return dataset
        except Exception:
            logger.exception("preparing dataset %s failed", dataset.pk)
            _fail(dataset, UNEXPECTED_FAILURE)
            raise
    return _finish_preparation(dataset, *outputs)


def time_limit_message() -> str:
    return (
        f"Preparing took longer than {settings.DATASET_PREPARE_TIME_LIMIT_SECONDS:,} s, the limit, and was "
        "stopped; nothing was kept. Upload a smaller file, or split it into parts."
    )


def _prepare_into(dataset: Dataset, folder: Path, progress: Callable[[int], None]):
    """Prepare into `folder`, then store the two files: (train key, validation key, result)."""
    allowance = quota.samples_allowance(dataset)
    train_path, validation_path = folder / "train.jsonl", folder / "validation.jsonl"
    with (
        storage.open_stream(dataset.raw_file) as source,
        open(train_path, "wb") as train,
        open(validation_path, "wb") as validation,
    ):
        result = prepare(
            source,
            dataset.original_filename,
            train,
            validation,
            prepare_options(dataset, max_output_bytes=allowance),
            progress=progress,
        )
    # Datasets stored by other uploads meanwhile count too.
    allowance = quota.samples_allowance(dataset)
    if result.stats["train_bytes"] + result.stats["validation_bytes"] > allowance:
        raise OutputTooLarge(allowance)
    if not dataset.record_progress(result.stats["rows"]):
        raise PreparationCancelled
    prefix = dataset.storage_prefix
    train_key = storage.save_path(prefix + "train.jsonl", train_path)
    validation_key = storage.save_path(prefix + "validation.jsonl", validation_path)
    return train_key, validation_key, result


def _finish_preparation(dataset: Dataset, train_key: str, validation_key: str, result) -> Dataset | None:
    old_outputs = [dataset.train_file, dataset.validation_file]
    stats, preview = storable(result.stats), storable(result.preview)
    if not dataset.mark_ready(train_key, validation_key, stats, preview, result.index):
        # Deleted (or taken over) while we worked: leave nothing behind for a row that is gone.
        if not _forget_if_gone(dataset):
            storage.delete([k for k in (train_key, validation_key) if k not in old_outputs])
        return None
    storage.delete([key for key in old_outputs if key and key not in (train_key, validation_key)])
    return dataset


def _forget_if_gone(dataset: Dataset) -> bool:
    """Remove every stored file of a dataset whose row was deleted; False when the row is still there."""
    if Dataset.objects.filter(pk=dataset.pk).exists():
        return False
    _remove_quietly(dataset.storage_prefix)
    return True


def reap_stale_preparations(now: datetime | None = None) -> list[int]:
    """Fail preparations whose worker stopped writing heartbeats (killed, or out of memory)."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.DATASET_PREPARE_HEARTBEAT_TIMEOUT)
    stale = Dataset.objects.filter(status=Dataset.Status.PREPARING, heartbeat_at__lt=cutoff)
    reaped = []
    for dataset in stale.only("pk", "owner_id", "uuid", "raw_file", "heartbeat_at"):
        when = timezone.localtime(dataset.heartbeat_at).strftime("%Y-%m-%d %H:%M:%S %Z")
        message = (
            f"The worker preparing this dataset stopped responding at {when}, so the preparation "
            "was stopped and nothing it wrote was kept. Your upload is kept: choose “Prepare again” to retry."
        )
        if Dataset.reap_stale(dataset.pk, cutoff, message):
            _remove_all_but(dataset.storage_prefix, keep=dataset.raw_file)
            logger.warning("dataset %s: its preparation went silent at %s; failed it", dataset.pk, when)
            reaped.append(dataset.pk)
    return reaped


def _remove_all_but(prefix: str, keep: str) -> None:
    try:
        storage.delete([key for key in storage.list_keys(prefix) if key != keep])
    except storage.STORAGE_ERRORS as error:
        logger.error("could not remove the stored files under %s (remove them by hand): %r", prefix, error)


def _fail(dataset: Dataset, reason: str) -> None:
    # The row first: if the storage is what failed, removing the files may fail too, and the
    # dataset must not stay "preparing" meanwhile.
    dataset.mark_failed(storable(reason))
    _remove_quietly(dataset.storage_prefix)


def _remove_quietly(prefix: str) -> None:
    try:
        storage.delete_prefix(prefix)
    except storage.STORAGE_ERRORS as error:
        logger.error("could not remove the stored files under %s (remove them by hand): %r", prefix, error)


def rename_dataset(dataset: Dataset, name: str) -> None:
    dataset.rename(name.strip()[:200])


def delete_dataset(dataset: Dataset) -> None:
    """Delete the row, then every stored object under its prefix once that is committed."""
    prefix = dataset.storage_prefix
    with transaction.atomic():
        dataset.delete()
        transaction.on_commit(lambda: storage.delete_prefix(prefix))


def remove_owners_files(owner_id: int) -> None:
    """Every stored dataset file of a user who is gone (their datasets went with them)."""
    _remove_quietly(f"users/{owner_id}/datasets/")


def read_samples(dataset: Dataset, split: str, page: int, per_page: int = SAMPLES_PER_PAGE) -> dict[str, Any]:
    """One page of a prepared file, found through the offset index (reads at most a few hundred lines)."""
    key = dataset.train_file if split == "train" else dataset.validation_file
    index = dataset.sample_index.get(split) or {}
    total = int(index.get("samples", 0))
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    first = (page - 1) * per_page
    samples: list[dict[str, Any]] = []
    if key and total:
        every = int(index.get("every") or 1)
        offsets = index.get("offsets") or [0]
        slot = min(first // every, len(offsets) - 1)
        number = slot * every
        for line in storage.iter_lines(key, offsets[slot]):
            if number >= first:
                samples.append({"number": number + 1, "sample": _load(line)})
                if len(samples) == per_page:
                    break
            number += 1
    return {"split": split, "page": page, "pages": pages, "total": total, "samples": samples}


def _load(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        return {"text": line.decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"text": str(value)}


__all__ = [
    "MappingError",
    "PreparationCancelled",
    "PreparationError",
    "ReadOptions",
    "check_file",
    "create_dataset",
    "delete_dataset",
    "prepare_again",
    "read_samples",
    "reap_stale_preparations",
    "rename_dataset",
    "run_preparation",
]
