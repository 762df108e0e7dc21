"""What a playground worker keeps between prompts: loaded models, and tuned models' folders on disk.

Loaded models live in a small per-process LRU (`MODEL_CACHE`). A tuned model's files are
fetched through `jobs.artifacts` once per machine, into `PLAYGROUND_CACHE_DIR`, and shared
by the worker processes there.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from django.conf import settings

from jobs import artifacts
from jobs.models import TrainingJob

logger = logging.getLogger(__name__)

READY_MARKER = ".llmtuner-complete"


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


def model_folder(job: TrainingJob) -> Path:
    """The job's tuned model as a local Hugging Face folder, fetched once per machine.

    Worker processes that ask at the same time wait on a file lock; the first one
    downloads into a staging folder and renames it into place when complete.
    """
    root = Path(settings.PLAYGROUND_CACHE_DIR)
    root.mkdir(parents=True, exist_ok=True)
    name = f"job-{job.pk}-{artifacts.model_identity(job)}"
    folder = root / name
    if (folder / READY_MARKER).exists():
        return artifacts.model_root(folder)
    with _file_lock(root / f"{name}.lock"):
        if (folder / READY_MARKER).exists():
            return artifacts.model_root(folder)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            artifacts.fetch(job, staging)
            (staging / READY_MARKER).touch()
            shutil.rmtree(folder, ignore_errors=True)  # what an interrupted fetch left
            os.replace(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return artifacts.model_root(folder)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
