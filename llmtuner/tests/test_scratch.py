"""Temporary files: each task's in a folder of its own, none left behind by a failure or a crash."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import signals
from django.conf import settings as django_settings

from llmtuner import scratch


@pytest.fixture
def folders(settings, tmp_path):
    settings.TASK_TEMP_DIR = tmp_path / "tasks"
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploads")
    Path(settings.FILE_UPLOAD_TEMP_DIR).mkdir()
    return settings


def contents(folder) -> list[str]:
    return sorted(path.name for path in Path(folder).iterdir())


def test_a_task_folder_is_its_own_and_is_removed_when_its_task_fails(folders):
    with pytest.raises(RuntimeError), scratch.task_folder("job-") as folder:
        assert folder.parent == folders.TASK_TEMP_DIR
        (folder / "copy-of-user-data.jsonl").write_text("secret")
        raise RuntimeError("the task failed")

    assert contents(folders.TASK_TEMP_DIR) == []


KILLED_MID_TASK = """
import os, signal, sys
import django
os.environ["DJANGO_SETTINGS_MODULE"] = "llmtuner.settings"
os.environ["TASK_TEMP_DIR"] = sys.argv[1]
django.setup()
from llmtuner import scratch
with scratch.task_folder("killed-") as folder:
    (folder / "train.jsonl").write_text("half written")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_worker_start_removes_what_killed_tasks_left_and_not_the_running_ones(folders):
    subprocess.run([sys.executable, "-c", KILLED_MID_TASK, str(folders.TASK_TEMP_DIR)], check=False)
    (killed,) = contents(folders.TASK_TEMP_DIR)
    assert killed.startswith("killed-")

    with scratch.task_folder("running-") as running:
        # A worker starting beside one still at work (they share the disk in docker-compose).
        signals.worker_ready.send(sender=None)
        assert contents(folders.TASK_TEMP_DIR) == [running.name]
        assert (running / ".lock").exists()


def test_a_new_pool_process_cleans_up_too(folders):
    subprocess.run([sys.executable, "-c", KILLED_MID_TASK, str(folders.TASK_TEMP_DIR)], check=False)

    signals.worker_process_init.send(sender=None)

    assert contents(folders.TASK_TEMP_DIR) == []


def test_partial_uploads_a_killed_web_process_left_are_removed_and_fresh_ones_kept(folders):
    uploads = Path(folders.FILE_UPLOAD_TEMP_DIR)
    (uploads / "tmpold.upload.csv").write_bytes(b"half an upload")
    (uploads / "tmpnew.upload.csv").write_bytes(b"an upload streaming in now")
    two_hours_ago = time.time() - 7200
    os.utime(uploads / "tmpold.upload.csv", (two_hours_ago, two_hours_ago))

    scratch.remove_stale_uploads()

    assert contents(uploads) == ["tmpnew.upload.csv"]


def test_uploads_and_task_files_stay_in_our_own_folders_by_default():
    var = str(django_settings.VAR_DIR)
    assert django_settings.FILE_UPLOAD_TEMP_DIR.startswith(var)
    assert str(django_settings.TASK_TEMP_DIR).startswith(var)
    assert Path(django_settings.FILE_UPLOAD_TEMP_DIR).is_dir()


def test_the_web_process_removes_stale_partial_uploads_when_it_starts(tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "tmpkilled.upload.csv").write_bytes(b"what a killed web process was receiving")
    two_hours_ago = time.time() - 7200
    os.utime(uploads / "tmpkilled.upload.csv", (two_hours_ago, two_hours_ago))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "llmtuner.settings", "FILE_UPLOAD_TEMP_DIR": str(uploads)}

    subprocess.run([sys.executable, "-c", "import llmtuner.wsgi"], env=env, check=True)

    assert contents(uploads) == []
