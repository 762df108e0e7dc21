"""Sessions read from the shared cache and kept in the database.

Every page, and every 2 s poll of an open job page, reads the session: from the cache that is a
key lookup instead of a database query. The database stays the record, so a cache that was
emptied or cannot be reached costs a query, never a sign-out or an error page. A cached copy
lives at most `SESSION_CACHE_SECONDS`, which bounds how long a sign-out that could not reach the
cache leaves a copy there.
"""

from __future__ import annotations

import logging

from django.contrib.sessions.backends import cached_db
from django.contrib.sessions.backends.db import SessionStore as DatabaseStore

logger = logging.getLogger(__name__)

SESSION_CACHE_SECONDS = 600


class SessionStore(cached_db.SessionStore):
    def load(self) -> dict:
        try:
            data = self._cache.get(self.cache_key)
        except Exception as error:  # noqa: BLE001 - any cache failure: the database answers instead
            # One line a request while the cache is down, not a traceback each time.
            logger.warning("Session cache unavailable (%s); reading the session from the database", error)
            data = None
        if data is not None:
            return data
        session = self._get_session_from_db()
        if session is None:
            return {}
        data = self.decode(session.session_data)
        self._cache_copy(data, self.get_expiry_age(expiry=session.expire_date))
        return data

    def save(self, must_create: bool = False) -> None:
        DatabaseStore.save(self, must_create)
        self._cache_copy(self._session, self.get_expiry_age())

    def exists(self, session_key: str) -> bool:
        # Asked when a new key is made: the database alone knows every session.
        return DatabaseStore.exists(self, session_key)

    def delete(self, session_key: str | None = None) -> None:
        DatabaseStore.delete(self, session_key)
        session_key = session_key or self.session_key
        if session_key is None:
            return
        try:
            self._cache.delete(self.cache_key_prefix + session_key)
        except Exception as error:  # noqa: BLE001 - the copy expires within SESSION_CACHE_SECONDS
            logger.error(
                "Session cache unavailable (%s); a signed-out session's copy stays until it expires", error
            )

    def _cache_copy(self, data: dict, expiry_age: int) -> None:
        try:
            self._cache.set(self.cache_key, data, min(expiry_age, SESSION_CACHE_SECONDS))
        except Exception as error:  # noqa: BLE001
            logger.warning("Session cache unavailable (%s); not caching the session", error)
