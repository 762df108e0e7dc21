"""Playground domain: the model cache, fetching the tuned model safely, and runs that end in failure."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.utils import timezone
from moto import mock_aws

from jobs import playground
from jobs.models import Backend, JobStatus, PlaygroundRun, PlaygroundStatus, TrainingJob
from jobs.playground import ModelArtifactsError, ModelCache, UnsafeArchive
from jobs.tests.conftest import make_job
from llmtuner import storage

BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def model_cache_dir(settings, tmp_path):
    settings.PLAYGROUND_CACHE_DIR = tmp_path / "model-cache"
    playground.MODEL_CACHE.clear()
    yield settings.PLAYGROUND_CACHE_DIR
    playground.MODEL_CACHE.clear()


def completed(job: TrainingJob, **fields) -> TrainingJob:
    defaults = {"model_prefix": f"{job.storage_prefix()}/model"}
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.COMPLETED, finished_at=timezone.now(), **{**defaults, **fields}
    )
    job.refresh_from_db()
    return job


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


# --- The LRU of loaded models -------------------------------------------------------


def test_the_cache_keeps_at_most_n_models_and_unloads_the_least_recently_used(settings):
    settings.PLAYGROUND_CACHE_MODELS = 2
    loads, evictions = [], []
    cache = ModelCache(lambda: settings.PLAYGROUND_CACHE_MODELS, on_evict=lambda: evictions.append(1))

    def loader(key):
        return lambda: loads.append(key) or f"model {key}"

    assert cache.get_or_load("tuned:1", loader("tuned:1")) == ("model tuned:1", True)
    assert cache.get_or_load("base:gpt2", loader("base:gpt2")) == ("model base:gpt2", True)
    assert cache.get_or_load("tuned:1", loader("tuned:1")) == ("model tuned:1", False)
    cache.get_or_load("tuned:2", loader("tuned:2"))  # base:gpt2 was used least recently

    assert cache.keys() == ["tuned:1", "tuned:2"]
    assert loads == ["tuned:1", "base:gpt2", "tuned:2"]
    assert len(evictions) == 1
    cache.get_or_load("base:gpt2", loader("base:gpt2"))
    assert cache.keys() == ["tuned:2", "base:gpt2"]
    assert loads[-1] == "base:gpt2"


def test_the_cache_makes_room_before_loading_so_memory_never_holds_more_than_n(settings):
    settings.PLAYGROUND_CACHE_MODELS = 1
    cache = ModelCache(lambda: settings.PLAYGROUND_CACHE_MODELS)
    cache.get_or_load("a", lambda: "A")
    seen_while_loading = []

    cache.get_or_load("b", lambda: seen_while_loading.extend(cache.keys()) or "B")

    assert seen_while_loading == []
    assert cache.keys() == ["b"]


def test_a_failed_load_leaves_nothing_in_the_cache():
    cache = ModelCache(2)

    with pytest.raises(OSError):
        cache.get_or_load("broken", lambda: (_ for _ in ()).throw(OSError("no such model")))

    assert cache.keys() == []


# --- Unpacking a SageMaker model.tar.gz ------------------------------------------------


@pytest.mark.parametrize(
    "bad_name", ["../escaped.txt", "model/../../escaped.txt", "/tmp/escaped.txt", "..", "C:/escaped.txt"]
)
def test_safe_extraction_refuses_members_that_would_land_outside(tmp_path, bad_name):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(tar_gz({"config.json": b"{}", bad_name: b"gotcha"}))
    destination = tmp_path / "out" / "model"
    destination.mkdir(parents=True)

    with pytest.raises(UnsafeArchive, match="would land outside the model folder"):
        playground.safe_extract_tar(archive, destination)

    assert not (tmp_path / "out" / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/escaped.txt").exists()


def test_safe_extraction_refuses_links(tmp_path):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(tar_gz({"config.json": b"{}"}, links={"weights.bin": "/etc/passwd"}))

    with pytest.raises(UnsafeArchive, match="holds a link"):
        playground.safe_extract_tar(archive, tmp_path / "out")


def test_safe_extraction_unpacks_an_ordinary_model_archive(tmp_path):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(tar_gz({"config.json": b'{"a": 1}', "./tokenizer.json": b"{}", "sub/x.txt": b"x"}))

    playground.safe_extract_tar(archive, tmp_path / "out")

    assert (tmp_path / "out" / "config.json").read_bytes() == b'{"a": 1}'
    assert (tmp_path / "out" / "tokenizer.json").exists()
    assert (tmp_path / "out" / "sub" / "x.txt").read_bytes() == b"x"


def test_a_corrupt_archive_is_a_clear_error(tmp_path):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"\x1f\x8b not really gzip")

    with pytest.raises(ModelArtifactsError, match="could not be read"):
        playground.safe_extract_tar(archive, tmp_path / "out")


# --- Fetching the tuned model ---------------------------------------------------------


@pytest.mark.django_db
def test_a_local_jobs_model_folder_comes_from_storage_once_per_machine(owner, settings):
    job = completed(make_job(owner))
    for name, data in {"config.json": b"{}", "tokenizer.json": b"{}", "nested/extra.bin": b"\0\1"}.items():
        storage.save(f"{job.model_prefix}/{name}", io.BytesIO(data))

    folder = playground.model_folder(job)

    assert folder.parent == settings.PLAYGROUND_CACHE_DIR
    assert (folder / "config.json").read_bytes() == b"{}"
    assert (folder / "nested" / "extra.bin").read_bytes() == b"\0\1"
    storage.delete_prefix(f"{job.model_prefix}/")
    assert playground.model_folder(job) == folder  # served from disk, storage not asked again
    assert [p.name for p in settings.PLAYGROUND_CACHE_DIR.iterdir() if p.is_dir()] == [folder.name]


@pytest.mark.django_db
def test_a_missing_stored_model_is_a_clear_error_and_leaves_no_half_folder(owner, settings):
    job = completed(make_job(owner))

    with pytest.raises(ModelArtifactsError, match="missing from storage"):
        playground.model_folder(job)

    assert not [p for p in settings.PLAYGROUND_CACHE_DIR.iterdir() if p.is_dir()]


@pytest.fixture
def s3(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="sagemaker-output")
        yield client


@pytest.mark.django_db
def test_a_local_jobs_model_comes_from_s3_when_that_is_the_default_storage(owner, s3, settings, tmp_path):
    s3.create_bucket(Bucket="llmtuner-files")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {"bucket_name": "llmtuner-files", "region_name": "us-east-1", "location": "media"},
        },
    }
    assert storage.is_s3()
    job = completed(make_job(owner))
    storage.save(f"{job.model_prefix}/config.json", io.BytesIO(b'{"model_type": "gpt2"}'))
    storage.save(f"{job.model_prefix}/tokenizer/vocab.json", io.BytesIO(b"{}"))

    folder = playground.fetch_model_artifacts(job, tmp_path / "fetched")

    assert (folder / "config.json").read_bytes() == b'{"model_type": "gpt2"}'
    assert (folder / "tokenizer" / "vocab.json").read_bytes() == b"{}"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "config.json",
        "tokenizer/vocab.json",
    ]


@pytest.mark.django_db
def test_a_sagemaker_jobs_model_tar_gz_is_downloaded_and_unpacked(owner, s3, tmp_path):
    s3.put_object(
        Bucket="sagemaker-output",
        Key="jobs/tiny-1/output/model.tar.gz",
        Body=tar_gz({"config.json": b'{"model_type": "gpt2"}', "model.safetensors": b"weights"}),
    )
    job = completed(
        make_job(owner, backend=Backend.SAGEMAKER),
        model_prefix="",
        model_artifacts_uri="s3://sagemaker-output/jobs/tiny-1/output/model.tar.gz",
    )

    work = tmp_path / "work"
    folder = playground.fetch_model_artifacts(job, work / "model")

    assert folder == work / "model"
    assert (folder / "config.json").read_bytes() == b'{"model_type": "gpt2"}'
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in work.iterdir()) == ["model"]  # the archive was not left behind


@pytest.mark.django_db
def test_a_sagemaker_archive_with_a_bad_member_is_refused(owner, s3, tmp_path, settings):
    s3.put_object(
        Bucket="sagemaker-output",
        Key="model.tar.gz",
        Body=tar_gz({"config.json": b"{}", "../../outside.txt": b"gotcha"}),
    )
    job = completed(
        make_job(owner, backend=Backend.SAGEMAKER),
        model_prefix="",
        model_artifacts_uri="s3://sagemaker-output/model.tar.gz",
    )

    with pytest.raises(UnsafeArchive):
        playground.model_folder(job)

    assert not list(settings.PLAYGROUND_CACHE_DIR.rglob("outside.txt"))
    assert not (settings.PLAYGROUND_CACHE_DIR.parent / "outside.txt").exists()
    assert not [p for p in settings.PLAYGROUND_CACHE_DIR.iterdir() if p.is_dir()]


@pytest.mark.django_db
def test_a_missing_sagemaker_archive_is_a_clear_error(owner, s3, tmp_path):
    job = completed(
        make_job(owner, backend=Backend.SAGEMAKER),
        model_prefix="",
        model_artifacts_uri="s3://sagemaker-output/nothing/model.tar.gz",
    )

    with pytest.raises(ModelArtifactsError, match="Could not download the tuned model from s3://"):
        playground.fetch_model_artifacts(job, tmp_path / "model")


# --- Runs -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_prompt_for_a_job_that_is_not_completed_is_refused(owner):
    job = make_job(owner)

    with pytest.raises(playground.PlaygroundUnavailable, match="opens once it has completed"):
        playground.submit_prompt(job, prompt="Hi", max_new_tokens=8, temperature=0, top_p=1)

    assert not PlaygroundRun.objects.exists()


@pytest.mark.django_db
def test_a_run_whose_model_is_missing_fails_with_the_reason(owner):
    job = completed(make_job(owner))
    run = PlaygroundRun.objects.create(job=job, prompt="Hi", max_new_tokens=8, temperature=0, top_p=1)

    playground.run_generation(run.pk)

    run.refresh_from_db()
    assert run.status == PlaygroundStatus.FAILED
    assert "missing from storage" in run.error
    assert run.finished_at is not None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (SoftTimeLimitExceeded(), "Generation took longer than 600 s and was stopped."),
        (MemoryError("out of memory"), "Generation failed: MemoryError: out of memory"),
    ],
)
def test_a_run_that_runs_out_of_time_or_breaks_fails_with_a_message(
    owner, monkeypatch, settings, raised, message
):
    from jobs import generation

    settings.PLAYGROUND_TIME_LIMIT_SECONDS = 600
    job = completed(make_job(owner))
    run = PlaygroundRun.objects.create(job=job, prompt="Hi", max_new_tokens=8, temperature=0, top_p=1)

    def compare(*, outcome, **_):
        outcome.tuned_output, outcome.tuned_tokens = "half an answer", 3
        raise raised

    monkeypatch.setattr(generation, "compare", compare)
    playground.run_generation(run.pk)

    run.refresh_from_db()
    assert run.status == PlaygroundStatus.FAILED
    assert run.error == message
    assert (run.tuned_output, run.tuned_tokens) == ("half an answer", 3)  # what was done is kept


@pytest.mark.django_db
def test_a_run_is_generated_once_even_if_its_task_comes_twice(owner):
    job = completed(make_job(owner))
    run = PlaygroundRun.objects.create(
        job=job, prompt="Hi", max_new_tokens=8, temperature=0, top_p=1, status=PlaygroundStatus.DONE
    )

    playground.run_generation(run.pk)

    run.refresh_from_db()
    assert run.status == PlaygroundStatus.DONE
    assert run.error == ""


@pytest.mark.django_db
def test_runs_left_behind_by_a_dead_worker_are_failed(owner, settings):
    settings.PLAYGROUND_TIME_LIMIT_SECONDS = 60
    job = completed(make_job(owner))
    now = timezone.now()

    def run(**fields):
        return PlaygroundRun.objects.create(
            job=job, prompt="Hi", max_new_tokens=8, temperature=0, top_p=1, **fields
        )

    dead = run(status=PlaygroundStatus.RUNNING, started_at=now - timedelta(minutes=5))
    busy = run(status=PlaygroundStatus.RUNNING, started_at=now - timedelta(seconds=30))
    waiting = run()
    forgotten = run()
    PlaygroundRun.objects.filter(pk=forgotten.pk).update(created_at=now - timedelta(hours=3))

    assert sorted(playground.fail_stale_runs()) == sorted([dead.pk, forgotten.pk])

    statuses = dict(PlaygroundRun.objects.values_list("pk", "status"))
    assert statuses == {
        dead.pk: PlaygroundStatus.FAILED,
        busy.pk: PlaygroundStatus.RUNNING,
        waiting.pk: PlaygroundStatus.QUEUED,
        forgotten.pk: PlaygroundStatus.FAILED,
    }
    assert "no answer after 60 s" in PlaygroundRun.objects.get(pk=dead.pk).error


def test_the_web_process_never_imports_torch():
    code = (
        "import django, sys; django.setup();"
        "import llmtuner.urls, jobs.urls, jobs.playground_views, jobs.playground, jobs.tasks;"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=BASE_DIR,
        env={"DJANGO_SETTINGS_MODULE": "llmtuner.settings", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
