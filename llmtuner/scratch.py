"""Scratch space on local disk: a folder of its own for each task, and what a crash leaves behind.

`task_folder()` makes a folder under TASK_TEMP_DIR that holds a lock for as long as its task
runs and is removed when the task ends, however it ends. A process killed outright (kill -9,
Celery's hard time limit, the machine's OOM killer) cannot remove it, but the kernel drops its
lock; `remove_leftovers()`, run at worker start and in each new worker process, removes every
folder whose lock nobody holds, so folders of tasks still running in other workers that share
the disk are left alone.

Partial uploads are Django's own temporary files in FILE_UPLOAD_TEMP_DIR, removed when their
request ends; those a killed web process left are removed at the next start once untouched for
an hour (a file still being received is written to all the time, and a finished upload is
stored within minutes).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
STALE_UPLOAD_SECONDS = 3600


@contextlib.contextmanager
def task_folder(prefix: str) -> Iterator[Path]:
    """A new folder under TASK_TEMP_DIR for one task's files; removed with them when the block ends."""
    root = Path(settings.TASK_TEMP_DIR)
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        with open(folder / LOCK_NAME, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_leftovers() -> list[Path]:
    """Remove the task folders no running process holds, and stale partial uploads; returns them."""
    removed = [folder for folder in _task_folders() if _remove_if_abandoned(folder)]
    removed += remove_stale_uploads()
    if removed:
        logger.info("removed %d leftover temporary folder(s) and file(s)", len(removed))
    return removed


def remove_stale_uploads() -> list[Path]:
    folder = Path(settings.FILE_UPLOAD_TEMP_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - STALE_UPLOAD_SECONDS
    removed = []
    for path in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
    return removed


def _task_folders() -> list[Path]:
    root = Path(settings.TASK_TEMP_DIR)
    return [path for path in root.iterdir() if path.is_dir()] if root.is_dir() else []


def _remove_if_abandoned(folder: Path) -> bool:
    lock_path = folder / LOCK_NAME
    if not lock_path.exists():
        # Made a moment ago and not locked yet, unless it is old.
        with contextlib.suppress(FileNotFoundError):
            if folder.stat().st_mtime > time.time() - STALE_UPLOAD_SECONDS:
                return False
        shutil.rmtree(folder, ignore_errors=True)
        return True
    try:
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(folder, ignore_errors=True)
    except BlockingIOError:
        return False  # its task is still running
    except FileNotFoundError:
        return False  # its task ended meanwhile and removed it
    return True
