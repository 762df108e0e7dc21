from __future__ import annotations

from django.conf import settings


def login_options(request) -> dict:
    return {"google_login_enabled": bool(settings.GOOGLE_CLIENT_ID)}
