"""Where a job's checkpoints live in storage, and moving them between storage and a run's folder.

One layout for both backends (contract C2): `<prefix>checkpoint-<step>/<files>`, where the
prefix is the chain's (`TrainingJob.checkpoint_prefix`, the first attempt's
`users/<owner>/jobs/<id>/checkpoints/`). SageMaker's CheckpointConfig points its S3 URI at the
same keys, so a checkpoint written by either backend is found by the other. A checkpoint in
storage is complete once its `state.json` is there; it is uploaded last, as the script writes
it last, so a half-uploaded checkpoint is never used.

Everything goes through llmtuner.storage (local media or S3).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from jobs.models import TrainingJob
from llmtuner import storage

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "state.json"
# Newest complete checkpoints kept in storage (the script keeps as many in its folder).
KEEP = 2
COPY_CHUNK = 1024 * 1024


def prefix(job: TrainingJob) -> str:
    """The storage prefix (ending in /) of the checkpoints this job's attempts share."""
    return job.checkpoint_prefix or f"{job.storage_prefix()}/checkpoints/"


def stored_steps(checkpoints: str) -> list[int]:
    """Steps of the complete checkpoints under the prefix `checkpoints`, oldest first."""
    steps = set()
    for key in storage.list_keys(checkpoints):
        parts = key.removeprefix(checkpoints).split("/")
        match = CHECKPOINT_NAME.match(parts[0])
        if match and parts[1:] == [COMPLETE_MARKER]:
            steps.add(int(match.group(1)))
    return sorted(steps)


def latest_step(job: TrainingJob) -> int | None:
    """The step of the newest complete checkpoint of the job's chain, or None when there is none."""
    steps = stored_steps(prefix(job))
    return steps[-1] if steps else None


def download_latest(job: TrainingJob, destination: Path) -> int | None:
    """Copy the chain's newest complete checkpoint into `destination/checkpoint-<step>`; its step.

    The folder is filled under a temporary name and renamed, as the script writes its own: a
    copy cut short is never taken for a checkpoint.
    """
    step = latest_step(job)
    if step is None:
        return None
    name = f"checkpoint-{step}"
    source = f"{prefix(job)}{name}/"
    target = Path(destination) / name
    partial = target.with_name(name + ".tmp")
    shutil.rmtree(partial, ignore_errors=True)
    for key in storage.list_keys(source):
        path = _inside(partial, key.removeprefix(source))
        path.parent.mkdir(parents=True, exist_ok=True)
        with storage.open_stream(key) as stream, open(path, "wb") as out:
            shutil.copyfileobj(stream, out, length=COPY_CHUNK)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return step


def local_steps(folder: Path) -> list[int]:
    """Steps of the complete checkpoints in a run's checkpoint folder, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    steps = []
    for child in folder.iterdir():
        match = CHECKPOINT_NAME.match(child.name)
        if match and child.is_dir() and (child / COMPLETE_MARKER).is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


def upload_latest(job: TrainingJob, folder: Path) -> int | None:
    """Store the newest complete checkpoint of a run's folder, if storage lacks it; its step.

    Older checkpoints in storage beyond the newest KEEP are removed. Returns None when there was
    nothing new (or the script removed the folder while it was being read: the next call
    stores the one that replaced it).
    """
    steps = local_steps(folder)
    if not steps:
        return None
    checkpoints = prefix(job)
    stored = stored_steps(checkpoints)
    step = steps[-1]
    if step in stored:
        return None
    name = f"checkpoint-{step}"
    source = Path(folder) / name
    key_prefix = f"{checkpoints}{name}/"
    storage.delete_prefix(key_prefix)  # what an upload cut short left
    try:
        files = sorted(path for path in source.rglob("*") if path.is_file())
        # state.json last: only then is the stored checkpoint complete.
        files.sort(key=lambda path: path.relative_to(source).as_posix() == COMPLETE_MARKER)
        for path in files:
            _save(f"{key_prefix}{path.relative_to(source).as_posix()}", path)
    except FileNotFoundError:
        # The script replaced or pruned it meanwhile; without its state.json it is not complete.
        storage.delete_prefix(key_prefix)
        return None
    prune(checkpoints, keep=KEEP)
    return step


def prune(checkpoints: str, keep: int = KEEP) -> None:
    """Remove all but the newest `keep` complete checkpoints, and incomplete ones older than those."""
    complete = stored_steps(checkpoints)
    if not complete:
        return
    kept = set(complete[-keep:])
    newest = complete[-1]
    names = {key.removeprefix(checkpoints).split("/")[0] for key in storage.list_keys(checkpoints)}
    for name in names:
        match = CHECKPOINT_NAME.match(name)
        if match and int(match.group(1)) not in kept and int(match.group(1)) < newest:
            storage.delete_prefix(f"{checkpoints}{name}/")


def _save(key: str, path: Path) -> None:
    saved = storage.save_path(key, path)
    if saved != key:  # storage never overwrites: a free name next to it would not be found
        storage.delete([saved])
        raise OSError(f"could not store {key}: the name is taken")


def _inside(folder: Path, relative: str) -> Path:
    target = (folder / relative).resolve()
    if not relative or not target.is_relative_to(folder.resolve()):
        raise ValueError(f"a checkpoint file named {relative!r} would land outside its folder")
    return target
