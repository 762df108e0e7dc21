from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models


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
    email_notifications = models.BooleanField(
        default=True, help_text="Email me when a job completes, fails or is stopped."
    )

    def __str__(self) -> str:
        return f"Profile of {self.user}"


def get_profile(user) -> Profile:
    """The user's profile, made on first use (users from any sign-up path get one)."""
    profile, _ = Profile.objects.get_or_create(user=user)
    return profile
