"""What we need from the Celery broker beyond sending: surviving its outages.

- `send_on_commit` sends a task once the transaction commits and, when the broker cannot be
  reached, logs it and carries on: the row is committed and says what it waits for, and a
  reaper sends the task again later. (A failed send used to raise after the commit: the person
  saw a 500 for a job or dataset that did exist, and nothing would ever run it.)
- `messages_in_broker` reads what the broker holds (waiting in a queue, or delivered to a
  worker and not yet acknowledged), so a reaper can tell a task still on its way from one the
  broker lost, e.g. when Redis restarted without persistence.
"""

from __future__ import annotations

import logging
import uuid

from django.db import transaction
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# Every queue our tasks go to (settings: CELERY_TASK_DEFAULT_QUEUE and CELERY_TASK_ROUTES).
QUEUES = ("default", "training", "playground", "datasets", "exports")


def send_on_commit(task, args: tuple = (), task_id: str | None = None, **options) -> None:
    """Send `task` after commit, never raising; `task_id` is the one the caller keeps on its row."""
    task_id = task_id or str(uuid.uuid4())

    def send() -> None:
        try:
            task.apply_async(args, task_id=task_id, **options)
        except OperationalError as error:
            logger.warning(
                "could not send %s%s (task %s) to the broker: %s; a reaper will send it again",
                task.name,
                args,
                task_id,
                error,
            )

    transaction.on_commit(send)


def messages_in_broker() -> str | None:
    """Every message the broker holds, as one string to search for task ids; None when unknown.

    Only the Redis transport can be read this way; for any other the answer is None, and
    callers must assume the message is still there.
    """
    from llmtuner.celery import app

    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
            if connection.transport.driver_type != "redis":
                return None
            channel = connection.default_channel
            client = channel.client
            keys = set()
            for queue in QUEUES:
                keys |= {channel._q_for_pri(queue, priority) for priority in channel.priority_steps}
            parts: list[bytes] = []
            for key in keys:
                parts += client.lrange(key, 0, -1)
            parts += client.hvals(channel.unacked_key)
    except (OperationalError, RedisError, OSError):
        return None
    return b"\n".join(parts).decode("utf-8", "replace")
