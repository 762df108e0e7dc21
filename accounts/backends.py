"""Authentication backends that read the signed-in user from the shared cache.

Django loads the user from the database on every request; here the row is kept in the cache for
`USER_CACHE_SECONDS` and dropped whenever the user is saved or deleted (accounts/signals.py), so
a password change still ends the other sessions at once. A change made without `save()` (a
queryset `update()`) shows after at most `USER_CACHE_SECONDS`. If the cache cannot be reached,
the database answers.
"""

from __future__ import annotations

import logging

from allauth.account.auth_backends import AuthenticationBackend
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache

logger = logging.getLogger(__name__)

USER_CACHE_SECONDS = 60


def user_cache_key(user_id) -> str:
    return f"accounts:user:{user_id}"


def forget_user(user_id) -> None:
    try:
        cache.delete(user_cache_key(user_id))
    except Exception:  # noqa: BLE001 - a stale entry expires by itself
        logger.warning("Could not drop user %s from the cache", user_id, exc_info=True)


class CachedUserMixin:
    def get_user(self, user_id):
        key = user_cache_key(user_id)
        try:
            user = cache.get(key)
        except Exception:  # noqa: BLE001 - any cache failure: the database answers instead
            logger.warning("User cache unavailable; reading the user from the database", exc_info=True)
            user = None
        if user is not None:
            return user if self.user_can_authenticate(user) else None
        user = super().get_user(user_id)
        if user is not None:
            try:
                cache.set(key, user, USER_CACHE_SECONDS)
            except Exception:  # noqa: BLE001
                logger.warning("User cache unavailable; not caching the user", exc_info=True)
        return user


class CachedModelBackend(CachedUserMixin, ModelBackend):
    pass


class CachedAllauthBackend(CachedUserMixin, AuthenticationBackend):
    pass
