"""A preparation ends, whatever happens: time limit, its dataset or owner deleted, its worker killed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.core.files.base import ContentFile
from django.utils import timezone

from datasets_app import actions, preparation
from datasets_app.models import Dataset
from datasets_app.tasks import prepare_dataset
from datasets_app.tests.conftest import make_dataset, stored_files, task_folders
from llmtuner import storage

pytestmark = pytest.mark.django_db


def lines_csv(rows: int) -> bytes:
    return ("text\n" + "".join(f"sample number {n}\n" for n in range(rows))).encode()


def uploaded(owner, data: bytes) -> Dataset:
    read = actions.ReadOptions()
    return actions.create_dataset(owner, ContentFile(data, name="data.csv"), "data.csv", read, queue=False)


@pytest.fixture
def checkpoint_often(monkeypatch):
    # A checkpoint at every 1,000th row, as a slow preparation has every few seconds.
    monkeypatch.setattr(preparation, "PROGRESS_SECONDS", 0.0)


def test_a_preparation_past_its_time_limit_fails_saying_so_and_keeps_nothing(owner, settings, monkeypatch):
    settings.DATASET_PREPARE_TIME_LIMIT_SECONDS = 900
    dataset = uploaded(owner, lines_csv(10))
    real_prepare = actions.prepare

    def prepare_until_celery_stops_it(*args, **kwargs):
        real_prepare(*args, **kwargs)
        raise SoftTimeLimitExceeded()  # what Celery raises in the task at its soft time limit

    monkeypatch.setattr(actions, "prepare", prepare_until_celery_stops_it)
    prepare_dataset(dataset.pk)

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.FAILED
    assert dataset.error.startswith("Preparing took longer than 900 s, the limit, and was stopped")
    assert stored_files(settings.MEDIA_ROOT) == []
    assert task_folders(settings) == []


def test_the_task_has_the_time_limit_from_the_settings(settings):
    assert prepare_dataset.soft_time_limit == settings.DATASET_PREPARE_TIME_LIMIT_SECONDS
    assert prepare_dataset.time_limit > prepare_dataset.soft_time_limit


def test_a_preparation_writes_heartbeats_as_it_goes(owner, checkpoint_often):
    dataset = uploaded(owner, lines_csv(3500))
    beats = []

    actions.run_preparation(
        dataset.pk, on_progress=lambda rows: beats.append(Dataset.objects.get(pk=dataset.pk).heartbeat_at)
    )

    assert len(beats) == 3
    assert beats == sorted(beats)


def test_deleting_a_dataset_mid_preparation_stops_it_and_leaves_nothing(owner, settings, checkpoint_often):
    dataset = uploaded(owner, lines_csv(5000))
    seen = []

    def delete_it(rows: int) -> None:
        seen.append(rows)
        actions.delete_dataset(Dataset.objects.get(pk=dataset.pk))

    assert actions.run_preparation(dataset.pk, on_progress=delete_it) is None

    assert seen == [1000]  # stopped at the next checkpoint
    assert stored_files(settings.MEDIA_ROOT) == []
    assert task_folders(settings) == []


def test_deleting_the_owner_mid_preparation_stops_it_and_leaves_nothing(owner, settings, checkpoint_often):
    dataset = uploaded(owner, lines_csv(5000))
    seen = []

    def delete_the_owner(rows: int) -> None:
        seen.append(rows)
        owner.delete()

    assert actions.run_preparation(dataset.pk, on_progress=delete_the_owner) is None

    assert seen == [1000]
    assert stored_files(settings.MEDIA_ROOT) == []
    assert task_folders(settings) == []


def test_a_preparation_overtaken_by_a_new_one_stops_and_leaves_the_new_one_alone(owner, checkpoint_often):
    dataset = uploaded(owner, lines_csv(5000))

    def prepared_again_meanwhile(rows: int) -> None:
        Dataset.objects.filter(pk=dataset.pk).update(task_id="the-next-task")

    assert actions.run_preparation(dataset.pk, on_progress=prepared_again_meanwhile) is None

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.PREPARING
    assert storage.exists(dataset.raw_file)


def silent_preparation(owner, minutes: int) -> Dataset:
    """A dataset whose worker was killed `minutes` ago mid-preparation, a partial file stored."""
    dataset = make_dataset(owner, lines_csv(20))
    actions.prepare_again(dataset, actions.ReadOptions(), queue=False)
    Dataset.claim_for_preparation(dataset.pk)
    storage.save(dataset.storage_prefix + "train-partial.jsonl", ContentFile(b'{"text": "a"}\n'))
    Dataset.objects.filter(pk=dataset.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=minutes))
    return Dataset.objects.get(pk=dataset.pk)


def test_the_reaper_fails_a_preparation_whose_worker_went_silent_keeping_the_upload(owner, settings):
    settings.DATASET_PREPARE_HEARTBEAT_TIMEOUT = 300
    silent = silent_preparation(owner, minutes=10)
    running = silent_preparation(owner, minutes=1)

    assert actions.reap_stale_preparations() == [silent.pk]

    silent.refresh_from_db()
    assert silent.status == Dataset.Status.FAILED
    assert silent.error.startswith("The worker preparing this dataset stopped responding at ")
    assert "nothing it wrote was kept. Your upload is kept: choose “Prepare again” to retry." in silent.error
    assert storage.list_keys(silent.storage_prefix) == [silent.raw_file]
    assert silent.stored_bytes == silent.size_bytes
    assert silent.can_prepare_again
    assert Dataset.objects.get(pk=running.pk).status == Dataset.Status.PREPARING

    actions.prepare_again(silent, actions.ReadOptions(), queue=False)
    assert actions.run_preparation(silent.pk).status == Dataset.Status.READY


def test_the_page_of_a_reaped_dataset_says_what_happened(owner, owner_client):
    silent = silent_preparation(owner, minutes=60)
    actions.reap_stale_preparations()

    page = owner_client.get(f"/datasets/{silent.pk}/").content.decode()

    assert "stopped responding" in page
    assert "Prepare again" in page


def test_beat_reaps_silent_preparations_every_minute(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["reap-stale-preparations"]
    assert entry["task"] == "datasets_app.tasks.reap_stale_preparations"
    assert entry["schedule"] <= 60


def test_deleting_a_user_removes_their_datasets_files(
    owner, outsider, settings, django_capture_on_commit_callbacks
):
    make_dataset(owner, lines_csv(20))
    theirs = make_dataset(outsider, lines_csv(20))

    with django_capture_on_commit_callbacks(execute=True):
        owner.delete()

    assert Dataset.objects.count() == 1
    assert stored_files(settings.MEDIA_ROOT) == sorted(theirs.stored_keys())
