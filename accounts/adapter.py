"""allauth, adjusted: emails link to SITE_URL, and failed logins are counted per address and account.

The limits themselves are in settings.ACCOUNT_RATE_LIMITS; the README's security section lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from allauth.account import app_settings as account_settings
from allauth.account.adapter import DefaultAccountAdapter
from allauth.core.internal import ratelimit  # the module allauth's own adapter counts logins with
from allauth.core.internal.httpkit import clean_client_ip
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

# The ceiling on failed logins for one account from all addresses together (a guessing botnet).
ACCOUNT_WIDE_ACTION = "login_failed_account"


# What every email calls us (its subject, greeting and signature).
PRODUCT_NAME = "LLM Tuner"


@dataclass(frozen=True)
class EmailSite:
    """The site an email names (allauth's `current_site`): SITE_URL's host, never the request's."""

    domain: str
    name: str
    url: str


def email_site() -> EmailSite:
    return EmailSite(domain=urlsplit(settings.SITE_URL).netloc, name=PRODUCT_NAME, url=settings.SITE_URL)


def on_site(url: str, request_origin: str) -> str:
    """`url` moved from the request's origin to SITE_URL; any other value as it was."""
    if request_origin and url.startswith(request_origin + "/"):
        return settings.SITE_URL + url[len(request_origin) :]
    return url


def login_of(credentials: dict[str, Any]) -> str:
    return credentials.get("email", credentials.get("username", "")).lower()


class AccountAdapter(DefaultAccountAdapter):
    def send_mail(self, template_prefix: str, email: str, context: dict) -> None:
        # allauth builds its links (reset, confirmation, sign-up) from the request's Host; one
        # crafted Host header would otherwise send a user a working reset key on someone else's site.
        origin = self.request.build_absolute_uri("/").rstrip("/") if self.request else ""
        context = {
            key: on_site(value, origin) if isinstance(value, str) else value for key, value in context.items()
        }
        context["current_site"] = email_site()
        super().send_mail(template_prefix, email, context)

    def format_email_subject(self, subject: str) -> str:
        if account_settings.EMAIL_SUBJECT_PREFIX is not None:
            return super().format_email_subject(subject)
        return f"[{email_site().name}] {subject}"

    def get_client_ip(self, request: HttpRequest) -> str:
        try:
            return super().get_client_ip(request)
        except ImproperlyConfigured:
            # Fewer X-Forwarded-For entries than TRUSTED_PROXY_COUNT: the request skipped our outer
            # proxies. allauth answers that with a 500; the last entry is still a true address, the
            # peer of our innermost proxy.
            forwarded = clean_client_ip(request.headers["x-forwarded-for"].split(",")[-1])
            return forwarded or request.META["REMOTE_ADDR"]

    def _get_login_attempts_cache_key(self, request: HttpRequest, **credentials: Any) -> str:
        # Five wrong passwords lock the account for the address they came from, not for its owner
        # everywhere: a stranger cannot lock a user out of their own account cheaply. (allauth's own
        # key also holds the Host header, which a client may vary to reset its count.)
        return f"{self.get_client_ip(request)}:{login_of(credentials)}"

    def pre_authenticate(self, request: HttpRequest, **credentials: Any) -> None:
        super().pre_authenticate(request, **credentials)
        usage = ratelimit.consume(
            request, app="allauth.account", action=ACCOUNT_WIDE_ACTION, key=login_of(credentials)
        )
        if not usage:
            raise self.validation_error("too_many_login_attempts")
        # A successful login gives back both counts, as allauth does for its own.
        self._login_failed_rl_usage.usage.extend(usage.usage)

    def _delete_login_attempts_cached_email(self, request: HttpRequest, **credentials: Any) -> None:
        # A successful password reset clears the account-wide count too (allauth clears its own key).
        super()._delete_login_attempts_cached_email(request, **credentials)
        ratelimit.clear(request, app="allauth.account", action=ACCOUNT_WIDE_ACTION, key=login_of(credentials))
