"""Users with their monthly budget, dataset storage quota and profile.

The jobs app extends this user admin with each user's spend and job count (jobs/admin.py).
"""

from __future__ import annotations

from decimal import Decimal

from django.contrib import admin
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import get_user_model
from django.db.models import DecimalField, F, QuerySet, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest

from accounts.models import Profile, default_monthly_budget

User = get_user_model()


class ProfileInline(admin.StackedInline):
    model = Profile
    can_delete = False
    fields = ["monthly_budget_usd", "dataset_storage_quota_mb", "email_notifications"]


admin.site.unregister(User)


@admin.register(User)
class UserAdmin(auth_admin.UserAdmin):
    inlines = [ProfileInline]
    list_display = ["email", "username", "monthly_budget", "is_staff", "is_active", "date_joined"]
    list_filter = ["is_staff", "is_superuser", "is_active", "date_joined"]
    search_fields = ["email", "username", "first_name", "last_name"]
    ordering = ["email"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The budget in the list query itself, the default where a user has no profile yet.
        return (
            super()
            .get_queryset(request)
            .annotate(
                budget_usd=Coalesce(
                    F("profile__monthly_budget_usd"),
                    Value(default_monthly_budget()),
                    output_field=DecimalField(max_digits=10, decimal_places=2),
                )
            )
        )

    @admin.display(description="Monthly budget (USD)", ordering="budget_usd")
    def monthly_budget(self, user) -> str:
        return f"{Decimal(user.budget_usd):,.2f}"


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "monthly_budget_usd", "dataset_storage_quota_mb", "email_notifications"]
    list_select_related = ["user"]
    list_editable = ["monthly_budget_usd", "dataset_storage_quota_mb"]
    search_fields = ["user__email"]
