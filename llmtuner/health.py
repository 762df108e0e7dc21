"""Liveness for operators and container health checks.

Beat queues `worker_heartbeat` every minute; a worker that runs it stamps the
shared cache, so /health/ can say whether any worker is consuming the queue.
"""

from __future__ import annotations

import time

from celery import shared_task
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse

WORKER_HEARTBEAT_KEY = "health:worker-last-seen"


@shared_task(ignore_result=True)
def worker_heartbeat() -> None:
    cache.set(WORKER_HEARTBEAT_KEY, time.time(), timeout=None)


def health(request: HttpRequest) -> JsonResponse:
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as error:  # noqa: BLE001 - any failure is reported, never raised
        checks["database"] = f"error: {error.__class__.__name__}"
    last_seen = cache.get(WORKER_HEARTBEAT_KEY)
    checks["worker_seconds_since_heartbeat"] = round(time.time() - last_seen) if last_seen else None
    status = 200 if checks["database"] == "ok" else 503
    return JsonResponse(checks, status=status)
