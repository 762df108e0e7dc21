from django.contrib import admin
from django.urls import include, path

from jobs.dashboard import dashboard
from llmtuner.health import health

# Media files are never served by URL: every download goes through a view that
# checks the owner.
urlpatterns = [
    path("", include("accounts.urls")),
    path("dashboard/", dashboard, name="dashboard"),
    path("accounts/", include("allauth.urls")),
    path("datasets/", include("datasets_app.urls")),
    path("jobs/", include("jobs.urls")),
    path("admin/", admin.site.urls),
    path("health/", health, name="health"),
]

# Shown when the database itself is failing, so it needs neither the database nor the session.
handler500 = "llmtuner.errors.server_error"
