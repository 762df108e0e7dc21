"""The server-error page, which must not need the database: it is shown when the database fails.

A database that cannot be reached (restarting, failing over) is a 503 with Retry-After, and the
page says to try again in a moment; any other unexpected error is a 500. Both pages are plain
templates rendered without a request context, so no context processor touches the session,
the user or the database.
"""

from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.template import loader

RETRY_AFTER_SECONDS = 10


def server_error(request: HttpRequest) -> HttpResponse:
    if _database_unreachable(sys.exc_info()[1]):  # Django calls this while handling the exception
        page = loader.get_template("503.html").render({"retry_after": RETRY_AFTER_SECONDS})
        response = HttpResponse(page, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    return HttpResponse(loader.get_template("500.html").render({}), status=500)


def _database_unreachable(error: BaseException | None) -> bool:
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OperationalError | InterfaceError):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False
