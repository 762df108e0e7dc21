"""Where a completed (or stopped) job's tuned model is, for both backends, and the ways to get at it.

A local job's model is a folder of files in storage under `job.model_prefix`; a SageMaker
job's is the `model.tar.gz` at `job.model_artifacts_uri`. Both hold the same Hugging Face
folder (what the training script saved in `$SM_MODEL_DIR`), so both give the same files.
Everything reads through `llmtuner.storage` and streams: the archive is read member by
member, never downloaded whole first, and each name is checked before its file is written
anywhere (a folder on disk, or a zip on its way to the browser).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from django.core.cache import cache

from jobs import model_card
from jobs.models import Backend, JobStatus, Method, TrainingJob
from llmtuner import storage

COPY_CHUNK = 1024 * 1024
# Weights are already dense; compressing them costs CPU for nothing.
STORED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".zip", ".gz")
# What a damaged (truncated, not gzip, not tar) archive raises while it is read as a stream.
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error)


class ModelArtifactsError(Exception):
    """The tuned model is not there or could not be read; the message says why, for the person."""


class UnsafeArchive(ModelArtifactsError):
    pass


@dataclass(frozen=True)
class ModelFile:
    """One file of the model folder: its path inside the folder, its size, and how to read it."""

    name: str
    size: int
    open: Callable[[], AbstractContextManager[BinaryIO]]


def has_model(job: TrainingJob) -> bool:
    """Completed, or stopped after its script saved the model so far (its `stopped` event said so)."""
    if job.status == JobStatus.COMPLETED:
        return True
    if job.status != JobStatus.STOPPED or not (job.metrics or {}).get("model_saved"):
        return False
    return bool(job.model_artifacts_uri if job.backend == Backend.SAGEMAKER else job.model_prefix)


def locate(job: TrainingJob) -> str:
    """The job's stored model: its folder's storage prefix (ending in /), or its archive's s3:// URI."""
    if job.status == JobStatus.STOPPED and not has_model(job):
        raise ModelArtifactsError(
            "This job was stopped without a saved model (one is saved once a step has run)."
        )
    if not has_model(job):
        raise ModelArtifactsError(
            f"This job is {job.get_status_display().lower()}: it has no tuned model yet."
        )
    if job.backend == Backend.SAGEMAKER:
        uri = job.model_artifacts_uri
        if not uri:
            raise ModelArtifactsError(
                "This job completed, but SageMaker has not reported where its model was saved."
            )
        try:
            storage.parse_s3_uri(uri)
        except ValueError:
            raise ModelArtifactsError(f"The model location {uri!r} is not an s3://bucket/key URI.") from None
        return uri
    if not job.model_prefix:
        raise ModelArtifactsError("This job completed, but no tuned model was saved.")
    return job.model_prefix.rstrip("/") + "/"


def model_identity(job: TrainingJob) -> str:
    """Changes when the job's stored model does (a retried job saves a new one)."""
    source = job.model_artifacts_uri if job.backend == Backend.SAGEMAKER else job.model_prefix
    finished = job.finished_at.isoformat() if job.finished_at else ""
    return hashlib.sha256(f"{source}@{finished}".encode()).hexdigest()[:12]


def model_files(job: TrainingJob) -> Iterator[ModelFile]:
    """The files of the job's model folder. Read each one before asking for the next: a
    SageMaker archive is one stream. Raises ModelArtifactsError now if the model is not there."""
    location = locate(job)
    if job.backend == Backend.SAGEMAKER:
        return _archive_files(location)
    return (file for file in _stored_files(location))  # a generator: closable, like the archive's


def fetch(job: TrainingJob, destination: Path) -> Path:
    """Put the job's tuned Hugging Face folder (config, weights or adapter, tokenizer) in `destination`.

    Returns the folder that holds `config.json`: `destination`, or its one subfolder when
    the archive wrapped it. On an error the caller throws the partly filled folder away.
    """
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    location = locate(job)
    with _read_errors(location):
        for file in model_files(job):
            target = _safe_target(destination, file.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            with file.open() as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, length=COPY_CHUNK)
    return model_root(destination)


def model_root(folder: Path) -> Path:
    """The folder a fetched model loads from (the one with config.json)."""
    if (folder / "config.json").exists() or (folder / "adapter_config.json").exists():
        return folder
    children = [child for child in folder.iterdir() if child.is_dir()]
    if len(children) == 1 and (children[0] / "config.json").exists():
        return children[0]
    raise ModelArtifactsError("The tuned model's files have no config.json: the saved model is incomplete.")


def zip_stream(job: TrainingJob, folder: str, variant: str | None = None) -> Iterator[bytes]:
    """The job's model folder as a zip of `folder/<file>`, made chunk by chunk as it is sent.

    `variant` (default: the job's first) is one of `export_variants(job)`: `model` (the full or
    merged model) or `adapter` (a LoRA adapter alone). The zip ends with the model card,
    README.md, written from the job and the evaluation.json / samples.json it passed on the way.
    Whether the model is there is checked now (ModelArtifactsError), before a byte is sent;
    the files are read only as the zip is consumed.
    """
    variants = export_variants(job)
    variant = variant or variants[0]
    if variant not in variants:
        offered = " or ".join(VARIANTS[v] for v in variants)
        wanted = VARIANTS.get(variant, repr(variant)[:40])
        raise ModelArtifactsError(f"This job's download is {offered}, not {wanted}.")
    files = _variant_files(
        model_files(job), variant, adapter_apart=bool((job.metrics or {}).get("adapter_merged"))
    )
    return _zip(_with_model_card(job, files, folder, variant), folder)


# --- Which download: the model, or a LoRA adapter alone ------------------------------------------

VARIANTS = {"model": "the model", "adapter": "the LoRA adapter alone"}
ADAPTER_FOLDER = "adapter/"  # training_scripts/outputs.py: the adapter, saved beside a merged model
# Files of the run, not of the weights: in either download.
RUN_FILES = ("evaluation.json", "samples.json", "metrics.json", "hyperparameters.json")
CARD_INPUTS = ("evaluation.json", "samples.json")
MAX_CARD_INPUT = 16 * 1024 * 1024


def export_variants(job: TrainingJob) -> list[str]:
    """The downloads a job's model offers, the usual one first.

    Full fine-tuning: the model. LoRA with the adapter merged (the default): the merged model,
    and the adapter alone when the script kept it in adapter/ (not for `scratch:` bases, whose
    random initialisation cannot be loaded again). LoRA saved unmerged: the adapter only.
    """
    if job.method not in (Method.LORA, Method.QLORA):
        return ["model"]
    metrics = job.metrics or {}
    merged = (
        metrics["adapter_merged"]
        if "adapter_merged" in metrics
        else job.hyperparameters.get("merge_adapter", True)
    )
    if not merged:
        return ["adapter"]
    return ["model", "adapter"] if metrics.get("adapter_saved") else ["model"]


def _variant_files(files: Iterator[ModelFile], variant: str, adapter_apart: bool) -> Iterator[ModelFile]:
    for file in files:
        if file.name == "README.md" or file.name == ADAPTER_FOLDER + "README.md":
            continue  # the model card replaces what peft / the script wrote
        in_adapter = file.name.startswith(ADAPTER_FOLDER)
        if variant == "model" or not adapter_apart:
            if not in_adapter:
                yield file
        elif in_adapter:
            yield dataclasses.replace(file, name=file.name.removeprefix(ADAPTER_FOLDER))
        elif file.name in RUN_FILES:
            yield file


def _with_model_card(job: TrainingJob, files: Iterator[ModelFile], folder: str, variant: str):
    """The files, then README.md; the card's inputs are kept as the zip reads them (one pass)."""
    kept: dict[str, bytes] = {}
    for file in files:
        if file.name in CARD_INPUTS and file.size <= MAX_CARD_INPUT:
            file = dataclasses.replace(file, open=functools.partial(_kept_while_read, file, kept))
        yield file
    card = model_card.render(
        job, folder, variant, _json(kept.get("evaluation.json"), dict), _json(kept.get("samples.json"), list)
    ).encode()
    yield ModelFile(name="README.md", size=len(card), open=lambda: contextlib.nullcontext(io.BytesIO(card)))


@contextlib.contextmanager
def _kept_while_read(file: ModelFile, kept: dict[str, bytes]) -> Iterator[BinaryIO]:
    with file.open() as source:
        copy = io.BytesIO()

        class Tee:
            def read(self, size: int = -1) -> bytes:
                data = source.read(size)
                copy.write(data)
                return data

        yield Tee()  # type: ignore[misc]
    kept[file.name] = copy.getvalue()


def _json(data: bytes | None, kind: type):
    try:
        value = json.loads(data) if data else None
    except ValueError:
        return None
    return value if isinstance(value, kind) else None


# --- The evaluation, read back from the model folder (both backends) ----------------------------

EVALUATION_CACHE_SECONDS = 7 * 24 * 3600


def evaluation(job: TrainingJob) -> dict | None:
    """The job's evaluation.json (C6), or None when its run wrote none. Read from the stored model
    once (a SageMaker archive is read as far as that file), then kept in the cache."""
    key = f"jobs:evaluation:{job.pk}:{model_identity(job)}"
    found = cache.get(key)
    if found is None:
        found = {"evaluation": _read_evaluation(job)}
        cache.set(key, found, EVALUATION_CACHE_SECONDS)
    return found["evaluation"]


def _read_evaluation(job: TrainingJob) -> dict | None:
    location = locate(job)
    with _read_errors(location), contextlib.closing(iter(model_files(job))) as files:
        for file in files:
            if file.name == "evaluation.json":
                if file.size > MAX_CARD_INPUT:
                    raise ModelArtifactsError("The model's evaluation.json is too large to show.")
                with file.open() as source:
                    return _json(source.read(), dict)
    return None


def evaluation_summary(job: TrainingJob) -> dict | None:
    """`{"tuned": {...}, "base": {...}, "samples": N}` from the done event (job_status --json)."""
    found = (job.metrics or {}).get("evaluation")
    if not isinstance(found, dict):
        return None
    return {
        "tuned": found.get("tuned") or {},
        "base": found.get("base") or {},
        "samples": found.get("samples", 0),
    }


# --- Reading the two kinds of stored model -----------------------------------------------


def _stored_files(prefix: str) -> list[ModelFile]:
    keys = storage.list_keys(prefix)
    if not keys:
        raise ModelArtifactsError(
            f"The tuned model's files are missing from storage (nothing under {prefix})."
        )
    return [
        ModelFile(
            name=_safe_name(key.removeprefix(prefix), "Storage"),
            size=storage.size(key),
            open=functools.partial(storage.open_stream, key),
        )
        for key in keys
    ]


def _archive_files(uri: str) -> Iterator[ModelFile]:
    with _read_errors(uri):
        if not storage.uri_exists(uri):
            raise ModelArtifactsError(
                f"Could not download the tuned model from {uri}: there is nothing there."
            )
    return _read_archive(uri)


def _read_archive(uri: str) -> Iterator[ModelFile]:
    with storage.open_uri(uri) as body, tarfile.open(fileobj=body, mode="r|gz") as tar:
        for member in tar:
            name = _checked_member_name(member)
            if member.isfile():
                yield ModelFile(
                    name=name, size=member.size, open=functools.partial(_member_stream, tar, member)
                )


def _member_stream(tar: tarfile.TarFile, member: tarfile.TarInfo) -> AbstractContextManager[BinaryIO]:
    return contextlib.nullcontext(tar.extractfile(member))


def _checked_member_name(member: tarfile.TarInfo) -> str:
    name = member.name
    if member.issym() or member.islnk():
        raise UnsafeArchive(f"The model archive holds a link ({name!r}); refusing to unpack it.")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchive(f"The model archive holds a special file ({name!r}); refusing to unpack it.")
    return _safe_name(name, "The model archive", folder=member.isdir())


def _safe_name(relative: str, what: str, folder: bool = False) -> str:
    """`relative` as a plain path inside the model folder, or UnsafeArchive if it would leave it."""
    path = PurePosixPath(relative.replace("\\", "/"))
    empty = not path.parts and not folder  # "./" is the archive's own top folder
    if empty or path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise UnsafeArchive(
            f"{what} holds a file named {relative!r} that would land outside the model folder."
        )
    return path.as_posix()


def _safe_target(destination: Path, name: str) -> Path:
    target = (destination / name).resolve()
    if not target.is_relative_to(destination.resolve()):
        raise UnsafeArchive(
            f"The model holds a file named {name!r} that would land outside the model folder."
        )
    return target


@contextlib.contextmanager
def _read_errors(location: str) -> Iterator[None]:
    """Storage and archive failures while reading the model, as a message for the person."""
    try:
        yield
    except ARCHIVE_ERRORS as error:
        raise ModelArtifactsError(f"The model archive could not be read: {error}") from None
    except storage.STORAGE_ERRORS as error:
        raise ModelArtifactsError(f"Could not download the tuned model from {location}: {error}") from None


# --- The zip -------------------------------------------------------------------------------


def _zip(files: Iterator[ModelFile], folder: str) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", allowZip64=True) as archive:
        for file in files:
            info = zipfile.ZipInfo(f"{folder}/{file.name}")
            info.compress_type = (
                zipfile.ZIP_STORED if file.name.endswith(STORED_SUFFIXES) else zipfile.ZIP_DEFLATED
            )
            info.file_size = file.size
            info.external_attr = 0o644 << 16
            with file.open() as source, archive.open(info, "w") as target:
                while chunk := source.read(COPY_CHUNK):
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
