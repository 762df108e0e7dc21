"""Users with their monthly budget, this month's SageMaker spend and their number of jobs."""

from __future__ import annotations

from decimal import Decimal

from django.contrib import admin
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import get_user_model
from django.db.models import DecimalField, F, QuerySet, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest

from accounts.models import Profile
from jobs import reports

User = get_user_model()


class ProfileInline(admin.StackedInline):
    model = Profile
    can_delete = False
    fields = ["monthly_budget_usd", "email_notifications"]


admin.site.unregister(User)


@admin.register(User)
class UserAdmin(auth_admin.UserAdmin):
    inlines = [ProfileInline]
    list_display = [
        "email",
        "username",
        "monthly_budget",
        "spend_this_month",
        "job_count",
        "is_staff",
        "is_active",
        "date_joined",
    ]
    list_filter = ["is_staff", "is_superuser", "is_active", "date_joined"]
    search_fields = ["email", "username", "first_name", "last_name"]
    ordering = ["email"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Three subqueries in the one list query: no query per row.
        return (
            super()
            .get_queryset(request)
            .annotate(
                budget_usd=Coalesce(
                    F("profile__monthly_budget_usd"),
                    Value(reports.default_budget()),
                    output_field=DecimalField(max_digits=10, decimal_places=2),
                ),
                month_spend_usd=reports.month_spend_subquery(),
                jobs_count=reports.job_count_subquery(),
            )
        )

    @admin.display(description="Monthly budget (USD)", ordering="budget_usd")
    def monthly_budget(self, user) -> str:
        return f"{Decimal(user.budget_usd):,.2f}"

    @admin.display(description="Spent this month (USD)", ordering="month_spend_usd")
    def spend_this_month(self, user) -> str:
        return f"{Decimal(user.month_spend_usd):,.2f}"

    @admin.display(description="Jobs", ordering="jobs_count")
    def job_count(self, user) -> int:
        return user.jobs_count


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "monthly_budget_usd", "email_notifications"]
    list_select_related = ["user"]
    list_editable = ["monthly_budget_usd"]
    search_fields = ["user__email"]
