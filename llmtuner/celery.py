from __future__ import annotations

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmtuner.settings")

app = Celery("llmtuner")
# Every Celery option lives in settings.py under the CELERY_ prefix.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _make_broker_folders(sender, **kwargs) -> None:
    # The server-less filesystem broker of the embedded default needs its folders.
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        folder = sender.conf.broker_transport_options.get(key)
        if folder:
            os.makedirs(folder, exist_ok=True)


@signals.worker_ready.connect
@signals.worker_process_init.connect
def _remove_leftover_temporary_files(**kwargs) -> None:
    # What tasks killed outright left on disk (llmtuner/scratch.py): at worker start, and in each
    # new pool process, which replaces one that may have been killed mid-task.
    from llmtuner import scratch

    scratch.remove_leftovers()
