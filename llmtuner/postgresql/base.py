"""Django's PostgreSQL backend, with a health check that costs no round trip.

With CONN_HEALTH_CHECKS, Django asks a reused connection `SELECT 1` before each request's first
query, so that a database restart costs only the requests made while it is down. That is one
more round trip on every request, a quarter of a polled progress card's (bench/bench_progress.py).

An idle connection receives nothing, so a socket with something to read means the server closed
it or said something unprompted (a shutdown notice, a restart): only then is it asked as Django
asks. A connection whose server vanished without a word (a host lost) is not caught here, nor
was it by `SELECT 1`, which would wait for the network to give up.
"""

from __future__ import annotations

import select

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self) -> bool:
        if self.connection is None or self.connection.closed:
            return False
        poller = select.poll()
        try:
            poller.register(self.connection.fileno(), select.POLLIN)
        except (OSError, ValueError):
            return False
        if poller.poll(0):
            return super().is_usable()
        return True
