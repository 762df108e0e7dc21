"""A preparation on a real Celery worker that is killed with kill -9 midway."""

from __future__ import annotations

import gzip
import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from conftest import redis_broker_url
from datasets_app import actions
from datasets_app.models import Dataset
from datasets_app.tasks import prepare_dataset
from datasets_app.tests.conftest import task_folders
from jobs.tests.throwaway import celery_app_on, start_worker, stop_process_group, wait_for
from llmtuner import storage

pytestmark = [pytest.mark.services, pytest.mark.slow]


def big_csv(rows: int = 400_000) -> bytes:
    lines = "".join(f"sample number {n} of a file that takes a while\n" for n in range(rows))
    return ("text\n" + lines).encode()


def test_a_killed_worker_leaves_no_temp_files_and_its_preparation_is_reaped(
    transactional_db, owner, settings, tmp_path
):
    broker = redis_broker_url()
    if broker is None:
        pytest.skip("needs CELERY_BROKER_URL on Redis")
    env = {"TASK_TEMP_DIR": str(settings.TASK_TEMP_DIR), "DATASET_PREPARE_HEARTBEAT_TIMEOUT": "10"}
    worker = start_worker(broker, tmp_path / "worker.log", settings.MEDIA_ROOT, env=env)
    try:
        with celery_app_on(broker):
            dataset = actions.create_dataset(
                owner, ContentFile(big_csv(), name="big.csv"), "big.csv", actions.ReadOptions()
            )
        wait_for(lambda: _writing_samples(settings.TASK_TEMP_DIR), 60, "the preparation to start")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.PREPARING
    assert len(task_folders(settings)) == 1  # what the killed task was writing
    # Its heartbeat goes stale (10 s here), then a worker comes back, with beat, as a supervisor restarts it.
    Dataset.objects.filter(pk=dataset.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=30))
    log = tmp_path / "worker-with-beat.log"
    restarted = start_worker(broker, log, settings.MEDIA_ROOT, env=env, beat_schedule=tmp_path / "beat")
    try:
        assert task_folders(settings) == []
        # Beat first sends an every-60 s entry 60 s after it starts: wait for that, with room.
        wait_for(lambda: Dataset.objects.get(pk=dataset.pk).is_final, 120, "beat's reaper", log)
    finally:
        stop_process_group(restarted)

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.FAILED
    assert "stopped responding" in dataset.error
    assert storage.list_keys(dataset.storage_prefix) == [dataset.raw_file]


def _writing_samples(root: Path) -> bool:
    return any(path.stat().st_size > 0 for path in Path(root).glob("*/train.jsonl"))


def test_a_preparation_past_its_time_limit_on_a_real_worker_fails_saying_so(
    transactional_db, owner, settings, tmp_path, monkeypatch
):
    broker = redis_broker_url()
    if broker is None:
        pytest.skip("needs CELERY_BROKER_URL on Redis")
    # The sender writes the task's time limits into the message, and the worker obeys those.
    monkeypatch.setattr(prepare_dataset, "soft_time_limit", 10)
    monkeypatch.setattr(prepare_dataset, "time_limit", 70)
    # Celery caches a task's send options (the limits among them) at its first send: an earlier
    # test's send would otherwise put the default limit in this message.
    monkeypatch.setattr(prepare_dataset, "_exec_options", None)
    # The reviewer's case: a small .gz that expands to far more than it looks (here ~250 MB).
    bomb = gzip.compress(big_csv(rows=5_000_000), compresslevel=9)
    env = {"TASK_TEMP_DIR": str(settings.TASK_TEMP_DIR), "DATASET_PREPARE_TIME_LIMIT_SECONDS": "10"}
    worker = start_worker(broker, tmp_path / "worker.log", settings.MEDIA_ROOT, env=env)
    try:
        with celery_app_on(broker):
            dataset = actions.create_dataset(
                owner, ContentFile(bomb, name="small.csv.gz"), "small.csv.gz", actions.ReadOptions()
            )
        log = tmp_path / "worker.log"
        wait_for(lambda: Dataset.objects.get(pk=dataset.pk).is_final, 60, "the time limit", log)
    finally:
        stop_process_group(worker)

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.FAILED
    assert dataset.error.startswith("Preparing took longer than 10 s, the limit, and was stopped")
    assert storage.list_keys(dataset.storage_prefix) == []
    assert task_folders(settings) == []
