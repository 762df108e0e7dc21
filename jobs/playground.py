"""The playground: prompts tried on a completed job, answered by its tuned model and by its base.

The web process only saves a `PlaygroundRun` and queues `run_playground` after commit. The
worker claims the run, gets the tuned model's folder (from storage or SageMaker's
`model.tar.gz`, kept on disk once per worker machine), loads the models through a small
per-process LRU cache, and generates with `jobs.generation` - the only module here that
imports torch, imported inside `run_generation` so the web process never loads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files.storage import storages
from django.utils import timezone

from jobs.models import Backend, JobStatus, PlaygroundRun, PlaygroundStatus, TrainingJob
from llmtuner import broker, storage

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 4000
MAX_NEW_TOKENS = 512
MAX_TEMPERATURE = 2.0
UNTRAINED_SEED = 0
READY_MARKER = ".llmtuner-complete"
MAX_ERROR_CHARS = 2000
# A queued run nobody picked up, or a running one whose worker died, is failed after this.
QUEUED_TIMEOUT = timedelta(hours=2)
RUNNING_GRACE = timedelta(seconds=120)


class PlaygroundUnavailable(Exception):
    """The job has no tuned model to try (yet)."""


class ModelArtifactsError(Exception):
    """The tuned model could not be fetched; the message says why, for the person."""


class UnsafeArchive(ModelArtifactsError):
    pass


# --- Availability and submission (web process) --------------------------------------


def unavailable_reason(job: TrainingJob) -> str | None:
    """Why this job has no playground, or None when it has one."""
    if job.status != JobStatus.COMPLETED:
        return (
            f"This job is {job.get_status_display().lower()}: the playground opens once it has "
            "completed and its tuned model is saved."
        )
    if job.backend == Backend.SAGEMAKER and not job.model_artifacts_uri:
        return "This job completed, but SageMaker has not reported where its model was saved."
    if job.backend != Backend.SAGEMAKER and not job.model_prefix:
        return "This job completed, but no tuned model was saved."
    return None


def base_model_id(job: TrainingJob) -> str:
    # The catalogue's id (what the launch form passed to finetune.py), never a value a
    # person typed: the worker loads whatever this names.
    return job.base_model.hub_id


def is_scratch(job: TrainingJob) -> bool:
    return base_model_id(job).startswith("scratch:")


def base_label(job: TrainingJob) -> str:
    if is_scratch(job):
        return f"Untrained baseline (same architecture, random weights, seed {UNTRAINED_SEED})"
    return f"Base model ({base_model_id(job)})"


def is_chat(job: TrainingJob) -> bool:
    dataset = job.dataset
    return bool(dataset and (dataset.stats or {}).get("shape") == "messages")


def submit_prompt(
    job: TrainingJob, *, prompt: str, max_new_tokens: int, temperature: float, top_p: float
) -> PlaygroundRun:
    """Save the run as queued, then queue its generation once the row is committed."""
    reason = unavailable_reason(job)
    if reason:
        raise PlaygroundUnavailable(reason)
    from jobs import tasks

    task_id = str(uuid.uuid4())
    run = PlaygroundRun.objects.create(
        job=job,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        base_label=base_label(job),
        celery_task_id=task_id,
    )
    # With the broker down, the run waits queued and the stale-run reaper fails it visibly.
    broker.send_on_commit(tasks.run_playground, (run.pk,), task_id)
    return run


# --- State changes (conditional updates: a repeated task never runs twice) ------------


def claim_run(run_id: int) -> bool:
    return bool(
        PlaygroundRun.objects.filter(pk=run_id, status=PlaygroundStatus.QUEUED).update(
            status=PlaygroundStatus.RUNNING, started_at=timezone.now()
        )
    )


def finish_run(run_id: int, **fields: Any) -> bool:
    return bool(
        PlaygroundRun.objects.filter(pk=run_id, status=PlaygroundStatus.RUNNING).update(
            status=PlaygroundStatus.DONE, finished_at=timezone.now(), **fields
        )
    )


def fail_run(run_id: int, message: str, **fields: Any) -> bool:
    return bool(
        PlaygroundRun.objects.filter(
            pk=run_id, status__in=(PlaygroundStatus.QUEUED, PlaygroundStatus.RUNNING)
        ).update(
            status=PlaygroundStatus.FAILED,
            error=message[:MAX_ERROR_CHARS],
            finished_at=timezone.now(),
            **fields,
        )
    )


def fail_stale_runs() -> list[int]:
    """Fail runs whose worker died mid-generation, or that no worker picked up. Returns their ids."""
    now = timezone.now()
    limit = settings.PLAYGROUND_TIME_LIMIT_SECONDS
    stale_running = PlaygroundRun.objects.filter(
        status=PlaygroundStatus.RUNNING, started_at__lt=now - timedelta(seconds=limit) - RUNNING_GRACE
    ).values_list("pk", flat=True)
    stale_queued = PlaygroundRun.objects.filter(
        status=PlaygroundStatus.QUEUED, created_at__lt=now - QUEUED_TIMEOUT
    ).values_list("pk", flat=True)
    failed = []
    for run_id in list(stale_running):
        if fail_run(run_id, f"The worker stopped while generating: no answer after {limit} s."):
            failed.append(run_id)
    for run_id in list(stale_queued):
        if fail_run(run_id, "No worker picked this prompt up; is a worker running on the default queue?"):
            failed.append(run_id)
    return failed


# --- Generation (worker process) ---------------------------------------------------


def run_generation(run_id: int) -> None:
    """Answer one run with the tuned model and the base. Any error becomes a failed run."""
    if not claim_run(run_id):
        return
    run = PlaygroundRun.objects.select_related("job__base_model", "job__dataset").filter(pk=run_id).first()
    if run is None:  # the job was deleted meanwhile
        return
    job = run.job
    from jobs import generation  # torch and transformers: worker only

    outcome = generation.Outcome()
    try:
        generation.compare(
            tuned_key=f"tuned:{job.pk}:{model_identity(job)}",
            tuned_folder=lambda: model_folder(job),
            base=base_model_id(job),
            base_key=(
                f"untrained:{job.pk}:{model_identity(job)}"
                if is_scratch(job)
                else f"base:{base_model_id(job)}"
            ),
            request=generation.Request(
                prompt=run.prompt,
                max_new_tokens=run.max_new_tokens,
                temperature=run.temperature,
                top_p=run.top_p,
                seed=run.pk,
                chat=is_chat(job),
                untrained_seed=UNTRAINED_SEED,
            ),
            outcome=outcome,
            cache=MODEL_CACHE,
        )
    except SoftTimeLimitExceeded:
        message = f"Generation took longer than {settings.PLAYGROUND_TIME_LIMIT_SECONDS} s and was stopped."
        fail_run(run_id, message, **outcome.fields())
    except (generation.GenerationError, ModelArtifactsError) as error:
        fail_run(run_id, str(error), **outcome.fields())
    except Exception as error:
        logger.exception("playground run %s failed", run_id)
        fail_run(run_id, f"Generation failed: {type(error).__name__}: {error}", **outcome.fields())
    else:
        finish_run(run_id, **outcome.fields())


class ModelCache:
    """At most `capacity` loaded models in this process; the least recently used goes first.

    Room is made before a load, so memory never holds more than `capacity` models from here.
    One worker process runs one task at a time, so no lock is needed.
    """

    def __init__(self, capacity: Callable[[], int] | int, on_evict: Callable[[], None] | None = None):
        self._capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self.on_evict = on_evict

    @property
    def capacity(self) -> int:
        return max(1, self._capacity() if callable(self._capacity) else self._capacity)

    def get_or_load(self, key: str, load: Callable[[], Any]) -> tuple[Any, bool]:
        """(the value, whether it was loaded now)."""
        if key in self._items:
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:  # the setting may have been lowered
                self._evict_oldest()
            return self._items[key], False
        while len(self._items) >= self.capacity:
            self._evict_oldest()
        value = load()
        self._items[key] = value
        return value, True

    def keys(self) -> list[str]:
        return list(self._items)

    def clear(self) -> None:
        while self._items:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        key = next(iter(self._items))
        del self._items[key]  # no reference left here, so the model can be freed now
        logger.info("playground cache: unloading %s", key)
        if self.on_evict is not None:
            self.on_evict()  # e.g. hand the freed GPU memory back


MODEL_CACHE = ModelCache(lambda: settings.PLAYGROUND_CACHE_MODELS)


# --- The tuned model's files ---------------------------------------------------------


def model_identity(job: TrainingJob) -> str:
    """Changes when the job's stored model does (a retried job saves a new one)."""
    source = job.model_artifacts_uri if job.backend == Backend.SAGEMAKER else job.model_prefix
    finished = job.finished_at.isoformat() if job.finished_at else ""
    return hashlib.sha256(f"{source}@{finished}".encode()).hexdigest()[:12]


def model_folder(job: TrainingJob) -> Path:
    """The job's tuned model as a local Hugging Face folder, fetched once per machine.

    Worker processes that ask at the same time wait on a file lock; the first one
    downloads into a staging folder and renames it into place when complete.
    """
    root = Path(settings.PLAYGROUND_CACHE_DIR)
    root.mkdir(parents=True, exist_ok=True)
    name = f"job-{job.pk}-{model_identity(job)}"
    folder = root / name
    if (folder / READY_MARKER).exists():
        return _hf_root(folder)
    with _file_lock(root / f"{name}.lock"):
        if (folder / READY_MARKER).exists():
            return _hf_root(folder)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            fetch_model_artifacts(job, staging)
            (staging / READY_MARKER).touch()
            shutil.rmtree(folder, ignore_errors=True)  # what an interrupted fetch left
            os.replace(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return _hf_root(folder)


def fetch_model_artifacts(job: TrainingJob, destination: Path) -> Path:
    """Put the job's tuned Hugging Face folder (config, weights or adapter, tokenizer) in `destination`.

    SageMaker jobs: the `model.tar.gz` at `job.model_artifacts_uri` (s3://...), downloaded
    and unpacked with every member checked. Local jobs: the files stored under
    `job.model_prefix + "/"` in the default storage. Returns the folder that holds
    `config.json` (`destination`, or its one subfolder when the archive wrapped it).
    """
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    if job.backend == Backend.SAGEMAKER:
        if not job.model_artifacts_uri:
            raise ModelArtifactsError("SageMaker has not reported where this job's model was saved.")
        with tempfile.TemporaryDirectory(dir=destination.parent) as scratch:
            archive = Path(scratch) / "model.tar.gz"
            download_s3_uri(job.model_artifacts_uri, archive)
            safe_extract_tar(archive, destination)
    else:
        if not job.model_prefix:
            raise ModelArtifactsError("No tuned model was saved for this job.")
        _copy_stored_folder(job.model_prefix.rstrip("/") + "/", destination)
    return _hf_root(destination)


def _copy_stored_folder(prefix: str, destination: Path) -> None:
    keys = storage.list_keys(prefix)
    if not keys:
        raise ModelArtifactsError(
            f"The tuned model's files are missing from storage (nothing under {prefix})."
        )
    # S3 lists whole object keys, with the storage's location in front; we open by our own keys.
    location = (getattr(storages["default"], "location", "") or "").strip("/") if storage.is_s3() else ""
    location = f"{location}/" if location else ""
    for listed in keys:
        key = listed[len(location) :] if location and listed.startswith(location) else listed
        relative = key[len(prefix) :] if key.startswith(prefix) else ""
        target = _safe_target(destination, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        with storage.open_stream(key) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, length=1024 * 1024)


def download_s3_uri(uri: str, path: Path) -> None:
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not bucket or not key:
        raise ModelArtifactsError(f"The model location {uri!r} is not an s3://bucket/key URI.")
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("s3", endpoint_url=settings.AWS_S3_ENDPOINT_URL, region_name=settings.AWS_REGION)
    try:
        client.download_file(bucket, key, str(path))
    except (BotoCoreError, ClientError) as error:
        raise ModelArtifactsError(f"Could not download the tuned model from {uri}: {error}") from None


def safe_extract_tar(archive: Path, destination: Path) -> None:
    """Unpack a (gzipped) tar into `destination`, refusing anything that could land outside it.

    Absolute names, `..` parts, links and device files are refused before anything of
    theirs is written; the caller throws the partly filled folder away.
    """
    destination = Path(destination).resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                _check_member(member, destination)
                tar.extract(member, destination, filter="data")
    except tarfile.TarError as error:
        raise ModelArtifactsError(f"The model archive could not be read: {error}") from None


def _check_member(member: tarfile.TarInfo, destination: Path) -> None:
    name = member.name
    if member.issym() or member.islnk():
        raise UnsafeArchive(f"The model archive holds a link ({name!r}); refusing to unpack it.")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchive(f"The model archive holds a special file ({name!r}); refusing to unpack it.")
    _safe_target(destination, name, archive=True)


def _safe_target(destination: Path, relative: str, archive: bool = False) -> Path:
    what = "The model archive" if archive else "Storage"
    path = PurePosixPath(relative.replace("\\", "/"))
    if not relative or path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise UnsafeArchive(
            f"{what} holds a file named {relative!r} that would land outside the model folder."
        )
    target = (destination / path).resolve()
    if not target.is_relative_to(destination.resolve()):
        raise UnsafeArchive(
            f"{what} holds a file named {relative!r} that would land outside the model folder."
        )
    return target


def _hf_root(folder: Path) -> Path:
    if (folder / "config.json").exists() or (folder / "adapter_config.json").exists():
        return folder
    children = [child for child in folder.iterdir() if child.is_dir()]
    if len(children) == 1 and (children[0] / "config.json").exists():
        return children[0]
    raise ModelArtifactsError("The tuned model's files have no config.json: the saved model is incomplete.")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
