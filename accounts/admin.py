from django.contrib import admin

from accounts.models import Profile


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "monthly_budget_usd", "email_notifications"]
    list_select_related = ["user"]
    search_fields = ["user__email"]
