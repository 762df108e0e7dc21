from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts import secrets


def default_monthly_budget() -> Decimal:
    return Decimal(settings.DEFAULT_MONTHLY_BUDGET_USD)


class Profile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    monthly_budget_usd = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        default=default_monthly_budget,
        help_text="Cloud spend allowed per calendar month (US dollars). Set by an operator.",
    )
    dataset_storage_quota_mb = models.PositiveIntegerField(
        "dataset storage quota (MB)",
        null=True,
        blank=True,
        help_text="Uploads and prepared samples together. Empty: the default (DATASET_STORAGE_QUOTA_MB).",
    )
    email_notifications = models.BooleanField(
        default=True, help_text="Email me when a job completes, fails or is stopped."
    )

    def __str__(self) -> str:
        return f"Profile of {self.user}"

    @property
    def dataset_storage_quota_bytes(self) -> int:
        megabytes = self.dataset_storage_quota_mb
        return (settings.DATASET_STORAGE_QUOTA_MB if megabytes is None else megabytes) * 1024 * 1024


def get_profile(user) -> Profile:
    """The user's profile, made on first use (users from any sign-up path get one)."""
    profile, _ = Profile.objects.get_or_create(user=user)
    return profile


def dataset_storage_quota_bytes(user_id: int) -> int:
    """The user's dataset storage quota, read without making a profile (workers call it too)."""
    profile = Profile.objects.filter(user_id=user_id).only("dataset_storage_quota_mb").first()
    return (profile or Profile()).dataset_storage_quota_bytes


class HubToken(models.Model):
    """A user's Hugging Face write token, encrypted (accounts/secrets.py); never shown once saved."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="hub_token")
    encrypted = models.TextField(editable=False)
    saved_at = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return f"Hub token of {self.user}"  # never the token

    def reveal(self) -> str:
        """The token itself, for the worker that pushes; raises secrets.UnreadableSecret."""
        return secrets.decrypt(self.encrypted)


def save_hub_token(user, token: str) -> HubToken:
    hub_token, _ = HubToken.objects.update_or_create(
        user=user, defaults={"encrypted": secrets.encrypt(token), "saved_at": timezone.now()}
    )
    return hub_token
