"""Keep secrets out of what we store and show: job logs, status messages, error texts.

A training script or a library it calls may print a token (in a traceback, a URL, a debug
line); those lines become a job's log, which its owner reads and which is kept in storage.
`redact` replaces the value of every secret this process knows with ***.
"""

from __future__ import annotations

import os
from functools import lru_cache

from django.conf import settings

SECRET_VARIABLES = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "SECRET_KEY",
    "EMAIL_HOST_PASSWORD",
    "GOOGLE_CLIENT_SECRET",
)
SETTINGS = ("SECRET_KEY", "EMAIL_HOST_PASSWORD", "GOOGLE_CLIENT_SECRET")
# Shorter values are not worth hiding and would blank out ordinary words.
MIN_LENGTH = 8
MASK = "***"


def secret_values() -> tuple[str, ...]:
    values = {os.environ.get(name, "") for name in SECRET_VARIABLES}
    values |= {str(getattr(settings, name, "") or "") for name in SETTINGS}
    database = settings.DATABASES.get("default", {}).get("PASSWORD") or ""
    values.add(str(database))
    return _longest_first(frozenset(v.strip() for v in values if len(v.strip()) >= MIN_LENGTH))


@lru_cache(maxsize=8)
def _longest_first(values: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(values, key=len, reverse=True))


def redact(text: str) -> str:
    for value in secret_values():
        if value in text:
            text = text.replace(value, MASK)
    return text
