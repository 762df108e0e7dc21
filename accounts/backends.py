"""Authentication backends that read the signed-in user from the shared cache.

Django loads the user from the database on every request; here the row is kept in the cache for
`USER_CACHE_SECONDS` and dropped whenever the user is saved or deleted (accounts/signals.py), so
a password change still ends the other sessions at once. A change made without `save()` (a
queryset `update()`) shows after at most `USER_CACHE_SECONDS`. If the cache cannot be reached,
the database answers. A view that reads its user's row in its own query hands it over instead
(known_user), and that row is always the current one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from allauth.account.auth_backends import AuthenticationBackend
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.core.exceptions import ValidationError

logger = logging.getLogger(__name__)

USER_CACHE_SECONDS = 60

# A user row that the view has just read from the database itself (see known_user).
_known_user = ContextVar("known_user", default=None)


def session_user_id(request):
    """The user id the session claims, not yet checked: for a view that reads that user's row itself."""
    try:
        return get_user_model()._meta.pk.to_python(request.session[SESSION_KEY])
    except (KeyError, ValidationError):
        return None


@contextmanager
def known_user(user) -> Iterator[None]:
    """While inside, signing the request's user in takes `user` if it is the one the session names.

    For a view polled every few seconds that reads its user's row in its own query (the job
    page's progress card): Django then checks that row exactly as one it read itself (the backend,
    `is_active`, the session's password hash), without a round trip to the cache for it.
    """
    token = _known_user.set(user)
    try:
        yield
    finally:
        _known_user.reset(token)


def user_cache_key(user_id) -> str:
    return f"accounts:user:{user_id}"


def forget_user(user_id) -> None:
    try:
        cache.delete(user_cache_key(user_id))
    except Exception as error:  # noqa: BLE001 - a stale entry expires by itself
        logger.warning("Could not drop user %s from the cache (%s)", user_id, error)


class CachedUserMixin:
    def get_user(self, user_id):
        known = _known_user.get()
        if known is not None and known.pk == user_id:
            return known if self.user_can_authenticate(known) else None
        key = user_cache_key(user_id)
        try:
            user = cache.get(key)
        except Exception as error:  # noqa: BLE001 - any cache failure: the database answers instead
            # One line a request while the cache is down, not a traceback each time.
            logger.warning("User cache unavailable (%s); reading the user from the database", error)
            user = None
        if user is not None:
            return user if self.user_can_authenticate(user) else None
        user = super().get_user(user_id)
        if user is not None:
            try:
                cache.set(key, user, USER_CACHE_SECONDS)
            except Exception as error:  # noqa: BLE001
                logger.warning("User cache unavailable (%s); not caching the user", error)
        return user


class CachedModelBackend(CachedUserMixin, ModelBackend):
    pass


class CachedAllauthBackend(CachedUserMixin, AuthenticationBackend):
    pass
