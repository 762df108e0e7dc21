"""Content-Security-Policy on every response: scripts and styles from our own origin only.

No inline script and no eval: htmx is configured (a meta tag in base.html) not to evaluate
attributes (`allowEval: false`, so no hx-on or js: values) and not to inject its indicator
<style> (`includeIndicatorStyles: false`; those two rules live in app.css). Behaviour lives in
static files that attach listeners.

Inline style *attributes* are allowed (`style-src-attr 'unsafe-inline'`): templates size their
progress bars with them, and an attribute cannot run code. <style> elements are not.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"


def policy() -> str:
    form_action = ["'self'"]
    if settings.GOOGLE_CLIENT_ID:
        # Signing in with Google posts here, then redirects there; browsers check the redirect.
        form_action.append("https://accounts.google.com")
    directives = {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "style-src-attr": ["'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "form-action": form_action,
        "frame-ancestors": ["'none'"],
        "base-uri": ["'none'"],
        "object-src": ["'none'"],
    }
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if settings.DEBUG and response.status_code in (404, 500) and _is_technical_page(response):
            return response  # Django's debug pages style and script themselves inline
        response.headers.setdefault(HEADER, policy())
        return response


def _is_technical_page(response: HttpResponse) -> bool:
    content = getattr(response, "content", b"") if not response.streaming else b""
    return b'<meta name="robots" content="NONE,NOARCHIVE">' in content[:2000]
