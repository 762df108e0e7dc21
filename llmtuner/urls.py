from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path

from jobs.dashboard import dashboard
from llmtuner.health import health

# The admin signs people in through the site's login, so its rate limits and lockout guard the
# admin too (Django's own admin login has none); staff come back to the admin page they asked for.
admin.site.login = secure_admin_login(admin.site.login)

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
