from __future__ import annotations

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse

GOOGLE_URLS = "/accounts/google/"


class GoogleOnlyWhenConfiguredMiddleware:
    """allauth routes its Google URLs whether or not Google is set up; unset, each of them was a 500
    (SocialApp.DoesNotExist) that anyone could trigger. Without GOOGLE_CLIENT_ID they are a 404."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(GOOGLE_URLS) and not settings.GOOGLE_CLIENT_ID:
            raise Http404("Google sign-in is not configured.")
        return self.get_response(request)
