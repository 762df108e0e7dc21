"""An entry's dataset: one of its user's ready datasets by id, or a file, checked (phase 1) and
imported (phase 2).

A file is read only from inside the manifest's folder, and imported once per user and content.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from django.core.files import File

from datasets_app import actions as dataset_actions
from datasets_app.mapping import MappingError, parse_mapping
from datasets_app.models import Dataset
from jobs.batch.plan import Entry, FileSource, Plan, Progress
from jobs.batch.reading import kind_of
from jobs.models import ManifestDataset

HASH_CHUNK = 1024 * 1024


def check_dataset(entry: Entry, base_dir: Path) -> None:
    value = entry.raw.get("dataset")
    if value in (None, ""):
        return
    mapping = entry.text("mapping")
    if (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value.strip().isdecimal()
    ):
        if mapping:
            entry.problem("mapping", "only a dataset given as a file is read with a mapping")
        dataset = Dataset.objects.filter(pk=int(value)).first()
        if dataset is None:
            entry.problem("dataset", f"no dataset has the id {value}")
        elif dataset.owner_id != entry.user.pk:
            entry.problem("dataset", f"dataset {value} is not one of {entry.user.email}'s datasets")
        elif not dataset.is_ready:
            reason = f": {dataset.error}" if dataset.error else ""
            entry.problem("dataset", f"dataset {value} is not ready ({dataset.get_status_display()}{reason})")
        else:
            entry.dataset = dataset
        return
    source = _check_file(entry, value, mapping, base_dir)
    if source is None:
        return
    entry.source = source
    entry.dataset = reusable_dataset(entry.user, source)


def check_dataset_file_only(entry: Entry, base_dir: Path) -> None:
    """Without a user, a file dataset can still be checked (so its problems are listed too)."""
    value = entry.raw.get("dataset")
    if isinstance(value, str) and not value.strip().isdecimal():
        _check_file(entry, value, entry.text("mapping"), base_dir)


def _check_file(entry: Entry, value: Any, mapping: str, base_dir: Path) -> FileSource | None:
    if not isinstance(value, str):
        entry.problem("dataset", f"must be a dataset id or a file path, not {kind_of(value)}")
        return None
    path = Path(value.strip()).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        entry.problem("dataset", f"file not found: {path}")
        return None
    # Whoever wrote the manifest must not make the server read any file it can (a key, /etc/passwd)
    # into a user's dataset, which that user could then download: files come from its own folder.
    folder = base_dir.resolve()
    if not path.resolve().is_relative_to(folder):
        entry.problem(
            "dataset", f"{value.strip()} is not inside the manifest's folder ({folder}); copy it there"
        )
        return None
    try:
        parse_mapping(mapping)
        with open(path, "rb") as handle:
            dataset_actions.check_file(handle, path.name, dataset_actions.ReadOptions(mapping=mapping))
    except MappingError as error:
        entry.problem("mapping", str(error))
        return None
    except dataset_actions.PreparationError as error:
        entry.problem("dataset", f"{path.name}: {error}")
        return None
    except OSError as error:
        entry.problem("dataset", f"cannot read {path}: {error.strerror or error}")
        return None
    return FileSource(path=path, sha256=file_sha256(path), mapping=mapping)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def reusable_dataset(user, source: FileSource) -> Dataset | None:
    """A ready dataset imported for this user from the same bytes with the same mapping, if any."""
    imported = (
        ManifestDataset.objects.filter(owner=user, sha256=source.sha256, read_options=source.mapping)
        .select_related("dataset")
        .order_by("-created_at")
    )
    for record in imported:
        if record.dataset.is_ready:
            return record.dataset
    return None


def import_datasets(plan: Plan, progress: Progress | None = None) -> None:
    """Import the file of each pending entry that needs one (once per user and file content)."""
    say = progress or (lambda message: None)
    todo = [entry for entry in plan.pending if entry.needs_import]
    done: dict[tuple[int, tuple[str, str]], Dataset | str] = {}
    for number, entry in enumerate(todo, 1):
        key = (entry.user.pk, entry.source.key)
        if key not in done:
            # Another run may have imported it since this one was checked.
            done[key] = reusable_dataset(entry.user, entry.source) or ""
        if not done[key]:
            say(f"[{number}/{len(todo)}] importing {entry.source.path} for {entry.user.email}")
            done[key] = import_file(entry.user, entry.source, say)
        result = done[key]
        if isinstance(result, Dataset):
            entry.dataset = result
            entry.imported = True
        else:
            entry.problem("dataset", result)


def import_file(user, source: FileSource, progress: Progress) -> Dataset | str:
    """Store and prepare the file as the user's dataset here and now (as `import_dataset` does).

    Returns the ready dataset, or why it is not.
    """
    read = dataset_actions.ReadOptions(mapping=source.mapping)
    with open(source.path, "rb") as handle:
        try:
            dataset = dataset_actions.create_dataset(user, File(handle), source.path.name, read, queue=False)
        except dataset_actions.PreparationError as error:
            return f"{source.path.name}: {error}"
    dataset_actions.run_preparation(
        dataset.pk, on_progress=lambda rows: progress(f"      {rows:,} rows read")
    )
    dataset.refresh_from_db()
    if not dataset.is_ready:
        return f"{source.path.name} could not be prepared: {dataset.error or dataset.get_status_display()}"
    ManifestDataset.objects.create(
        owner=user, sha256=source.sha256, read_options=source.mapping, dataset=dataset
    )
    progress(
        f"      dataset {dataset.pk} “{dataset.name}”: {dataset.samples:,} samples, {dataset.tokens:,} tokens"
    )
    return dataset
