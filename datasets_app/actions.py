"""What happens to a dataset: created from an upload, prepared, prepared again, renamed, deleted.

Views, the Celery task and the import_dataset command call these and nothing
else. Each changes the row through the model's named methods and does its
side effects (stored objects, the queued task) after the commit.
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.utils import timezone

from llmtuner import broker, storage
from llmtuner.text import storable

from .mapping import MappingError
from .models import Dataset
from .preparation import PreparationError, PrepareOptions, inspect_file, prepare

logger = logging.getLogger(__name__)

UNEXPECTED_FAILURE = (
    "Preparing this dataset failed because of a problem on our side, not in your file. "
    "Please upload it again; if it keeps failing, tell us."
)
SAMPLES_PER_PAGE = 25


@dataclass(frozen=True)
class ReadOptions:
    """How a file is read; the same four choices in the upload form, the dataset page and the command."""

    format: str = Dataset.Format.AUTO
    txt_mode: str = Dataset.TxtMode.LINE
    mapping: str = ""
    validation_fraction: float = 0.05


def max_upload_bytes() -> int:
    return settings.DATASET_MAX_UPLOAD_MB * 1024 * 1024


def prepare_options(dataset: Dataset) -> PrepareOptions:
    return PrepareOptions(
        format=dataset.format,
        txt_mode=dataset.txt_mode,
        mapping=dataset.mapping,
        validation_fraction=dataset.validation_fraction,
        max_decompressed_bytes=settings.DATASET_MAX_DECOMPRESSED_MB * 1024 * 1024,
        tokenizer_path=settings.DATASET_TOKENIZER,
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
    unusable (empty, binary, unsupported, a mapping naming a missing column).
    With `queue`, `prepare_dataset` is sent after the commit; without, the
    caller runs `run_preparation` itself.
    """
    original_filename = Path(original_filename or "upload").name[:255]
    if not upload.size:
        raise PreparationError("The file is empty.")
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
    broker.send_on_commit(prepare_dataset, (dataset.pk,), task_id, queue="default")


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
    """Claim a queued dataset and prepare it; None when there was nothing to claim.

    A PreparationError (the file's fault) fails the dataset with its message
    and removes its stored files. Anything else fails it with a generic
    message, removes the files too, and is raised again for the logs.
    """
    dataset = Dataset.claim_for_preparation(dataset_id)
    if dataset is None:
        return None
    old_outputs = [dataset.train_file, dataset.validation_file]

    def progress(rows: int) -> None:
        dataset.record_progress(rows)
        if on_progress is not None:
            on_progress(rows)

    prefix = dataset.storage_prefix
    with tempfile.TemporaryDirectory(prefix="dataset-", dir=settings.FILE_UPLOAD_TEMP_DIR) as tmp:
        train_path, validation_path = Path(tmp) / "train.jsonl", Path(tmp) / "validation.jsonl"
        try:
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
                    prepare_options(dataset),
                    progress=progress,
                )
            train_key = storage.save_path(prefix + "train.jsonl", train_path)
            validation_key = storage.save_path(prefix + "validation.jsonl", validation_path)
        except PreparationError as exc:
            _fail(dataset, str(exc))
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
    stats, preview = storable(result.stats), storable(result.preview)
    if not dataset.mark_ready(train_key, validation_key, stats, preview, result.index):
        # Deleted (or taken over) while we worked: leave nothing behind for a row that is gone.
        if not Dataset.objects.filter(pk=dataset.pk).exists():
            storage.delete_prefix(prefix)
        else:
            storage.delete([k for k in (train_key, validation_key) if k not in old_outputs])
        return None
    storage.delete([key for key in old_outputs if key and key not in (train_key, validation_key)])
    return dataset


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
    "PreparationError",
    "ReadOptions",
    "check_file",
    "create_dataset",
    "delete_dataset",
    "prepare_again",
    "read_samples",
    "rename_dataset",
    "run_preparation",
]
