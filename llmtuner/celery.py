from __future__ import annotations

import contextlib
import logging
import os

from celery import Celery, bootsteps, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmtuner.settings")

logger = logging.getLogger(__name__)
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


class QueueHeartbeat(bootsteps.StartStopStep):
    """Every few seconds the worker's main process says which queues it serves (jobs/queueing.py).

    A timer of the main process, not a task: it keeps beating while the pool runs a training
    for hours, so the job page tells a busy training worker from no worker at all.
    """

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs) -> None:
        super().__init__(worker, **kwargs)
        self.timer_ref = None

    def start(self, worker) -> None:
        from jobs.queueing import WORKER_BEAT_SECONDS

        self.beat(worker)
        self.timer_ref = worker.timer.call_repeatedly(WORKER_BEAT_SECONDS, self.beat, (worker,), priority=10)

    def stop(self, worker) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
        with _database_use():
            from jobs.queueing import forget_worker

            forget_worker(worker.hostname)

    @staticmethod
    def beat(worker) -> None:
        with _database_use():
            from jobs.queueing import record_worker_beat

            queues = list(worker.app.amqp.queues.consume_from or worker.app.amqp.queues)
            record_worker_beat(worker.hostname, queues)


@contextlib.contextmanager
def _database_use():
    # A beat that fails (the database restarting) is logged and the next one tries again; the
    # connection is closed after each, so the pool processes forked later never share it.
    from django.db import connection

    try:
        yield
    except Exception:
        logger.exception("could not record this worker's heartbeat")
    finally:
        connection.close()


app.steps["worker"].add(QueueHeartbeat)
