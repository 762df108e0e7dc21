"""A task's round trip through the real Redis broker and a real worker process."""

from __future__ import annotations

import time

import pytest
from django.core.cache import cache

from llmtuner.health import WORKER_HEARTBEAT_KEY, worker_heartbeat

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_a_real_worker_runs_a_queued_task(celery_worker_process, client):
    cache.delete(WORKER_HEARTBEAT_KEY)
    assert client.get("/health/").json()["worker_seconds_since_heartbeat"] is None

    worker_heartbeat.delay()

    deadline = time.monotonic() + 30
    while cache.get(WORKER_HEARTBEAT_KEY) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    health = client.get("/health/").json()
    assert health["database"] == "ok"
    assert health["worker_seconds_since_heartbeat"] is not None
    assert health["worker_seconds_since_heartbeat"] < 30


def test_celery_is_configured_for_long_work():
    from django.conf import settings

    from llmtuner.celery import app

    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"
    if settings.CELERY_BROKER_URL.startswith("redis"):
        assert app.conf.broker_transport_options["visibility_timeout"] > settings.MAX_JOB_RUNTIME_SECONDS
    assert "worker-heartbeat" in app.conf.beat_schedule
