"""Playground domain: the model cache, the tuned model's folder on a worker, and runs that end in failure."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.utils import timezone

from jobs.artifacts import ModelArtifactsError, UnsafeArchive
from jobs.models import PlaygroundRun, PlaygroundStatus
from jobs.playground import runs
from jobs.playground.cache import MODEL_CACHE, ModelCache, model_folder
from jobs.tests.conftest import completed, make_job, sagemaker_job, tar_gz
from llmtuner import storage

BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def model_cache_dir(settings, tmp_path):
    settings.PLAYGROUND_CACHE_DIR = tmp_path / "model-cache"
    MODEL_CACHE.clear()
    yield settings.PLAYGROUND_CACHE_DIR
    MODEL_CACHE.clear()


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


# --- The tuned model's folder, fetched once per machine ------------------------------


@pytest.mark.django_db
def test_a_local_jobs_model_folder_comes_from_storage_once_per_machine(owner, settings):
    job = completed(make_job(owner))
    for name, data in {"config.json": b"{}", "tokenizer.json": b"{}", "nested/extra.bin": b"\0\1"}.items():
        storage.save(f"{job.model_prefix}/{name}", io.BytesIO(data))

    folder = model_folder(job)

    assert folder.parent == settings.PLAYGROUND_CACHE_DIR
    assert (folder / "config.json").read_bytes() == b"{}"
    assert (folder / "nested" / "extra.bin").read_bytes() == b"\0\1"
    storage.delete_prefix(f"{job.model_prefix}/")
    assert model_folder(job) == folder  # served from disk, storage not asked again
    assert [p.name for p in settings.PLAYGROUND_CACHE_DIR.iterdir() if p.is_dir()] == [folder.name]


@pytest.mark.django_db
def test_a_missing_stored_model_is_a_clear_error_and_leaves_no_half_folder(owner, settings):
    job = completed(make_job(owner))

    with pytest.raises(ModelArtifactsError, match="missing from storage"):
        model_folder(job)

    assert not [p for p in settings.PLAYGROUND_CACHE_DIR.iterdir() if p.is_dir()]


@pytest.mark.django_db
def test_a_sagemaker_archive_with_a_bad_member_leaves_nothing_in_the_cache(owner, sagemaker_output, settings):
    job = sagemaker_job(
        owner, sagemaker_output, tar_gz({"config.json": b"{}", "../../outside.txt": b"gotcha"})
    )

    with pytest.raises(UnsafeArchive):
        model_folder(job)

    assert not list(settings.PLAYGROUND_CACHE_DIR.rglob("outside.txt"))
    assert not (settings.PLAYGROUND_CACHE_DIR.parent / "outside.txt").exists()
    assert not [p for p in settings.PLAYGROUND_CACHE_DIR.iterdir() if p.is_dir()]


# --- Runs -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_prompt_for_a_job_that_is_not_completed_is_refused(owner):
    job = make_job(owner)

    with pytest.raises(runs.PlaygroundUnavailable, match="opens once it has completed"):
        runs.submit_prompt(job, prompt="Hi", max_new_tokens=8, temperature=0, top_p=1)

    assert not PlaygroundRun.objects.exists()


@pytest.mark.django_db
def test_a_run_whose_model_is_missing_fails_with_the_reason(owner):
    job = completed(make_job(owner))
    run = PlaygroundRun.objects.create(job=job, prompt="Hi", max_new_tokens=8, temperature=0, top_p=1)

    runs.run_generation(run.pk)

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
    from jobs.playground import generation

    settings.PLAYGROUND_TIME_LIMIT_SECONDS = 600
    job = completed(make_job(owner))
    run = PlaygroundRun.objects.create(job=job, prompt="Hi", max_new_tokens=8, temperature=0, top_p=1)

    def compare(*, outcome, **_):
        outcome.tuned_output, outcome.tuned_tokens = "half an answer", 3
        raise raised

    monkeypatch.setattr(generation, "compare", compare)
    runs.run_generation(run.pk)

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

    runs.run_generation(run.pk)

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

    assert sorted(runs.fail_stale_runs()) == sorted([dead.pk, forgotten.pk])

    statuses = dict(PlaygroundRun.objects.values_list("pk", "status"))
    assert statuses == {
        dead.pk: PlaygroundStatus.FAILED,
        busy.pk: PlaygroundStatus.RUNNING,
        waiting.pk: PlaygroundStatus.QUEUED,
        forgotten.pk: PlaygroundStatus.FAILED,
    }
    assert "no answer after 60 s" in PlaygroundRun.objects.get(pk=dead.pk).error
