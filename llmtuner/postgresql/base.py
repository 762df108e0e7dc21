"""Django's PostgreSQL backend, with a health check that costs no round trip, and prepared statements
for the few queries asked many times a second.

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
import sys

import psycopg
from django.db.backends.postgresql import base
from django.db.backends.postgresql.psycopg_any import register_tzloader
from psycopg import pq

TIMESTAMPTZ_OID = psycopg.adapters.types["timestamptz"].oid


class PreparedCursor(base.ServerBindingCursor):
    """A cursor whose statements the server parses and plans once per connection, not at each run.

    Planning the progress card's query took the server longer than running it. Django turns
    psycopg's prepared statements off (connection poolers in transaction mode lose them), so only
    statements run through this cursor are prepared; every other query is as Django makes it.
    """

    def execute(self, query, params=None, *, prepare=True, binary=None):
        try:
            return super().execute(query, params, prepare=prepare, binary=binary)
        except psycopg.errors.FeatureNotSupported:
            # "cached plan must not change result type": a migration changed a column under a
            # statement this connection prepared. Forget them all and ask once more, unless a
            # transaction is now aborted (its rollback makes psycopg forget them too).
            if self.connection.info.transaction_status != pq.TransactionStatus.IDLE:
                raise
            self.connection.execute("DEALLOCATE ALL")
            return super().execute(query, params, prepare=prepare, binary=binary)


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        if connection.prepare_threshold is None and self.prepares_statements:
            # psycopg prepares nothing while this is None, even when asked; this large, it prepares
            # only what PreparedCursor asks for, never by a count of runs.
            connection.prepare_threshold = sys.maxsize
        return connection

    @property
    def prepares_statements(self) -> bool:
        # False (DATABASE_PREPARED_STATEMENTS=false) behind a pooler that does not keep prepared
        # statements across transactions, such as PgBouncer before 1.21 in transaction mode.
        return self.settings_dict.get("PREPARED_STATEMENTS", True)

    def prepared_cursor(self):
        """A cursor for a statement asked many times a second (see PreparedCursor)."""
        if not self.prepares_statements:
            return self.cursor()
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            cursor = PreparedCursor(self.connection)
            # Results in the connection's time zone, as Django's own cursors make sure of.
            loader = self.connection.adapters.get_loader(TIMESTAMPTZ_OID, pq.Format.TEXT)
            if self.timezone != loader.timezone:
                register_tzloader(self.timezone, cursor)
            return self._prepare_cursor(cursor)

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
