from django.urls import path

from jobs import playground_views, views

app_name = "jobs"
urlpatterns = [
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/playground/", playground_views.playground_page, name="playground"),
    path("<int:pk>/playground/<int:run_pk>/", playground_views.playground_run, name="playground_run"),
]
