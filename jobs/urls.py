from django.urls import path

from jobs import views
from jobs.playground import views as playground_views
from llmtuner import converters  # noqa: F401  (registers <id:...>)

app_name = "jobs"
urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.new_job, name="new"),
    path("new/estimate/", views.estimate, name="estimate"),
    path("<id:pk>/", views.detail, name="detail"),
    path("<id:pk>/progress/", views.progress, name="progress"),
    path("<id:pk>/metrics/", views.metrics, name="metrics"),
    path("<id:pk>/logs/", views.logs, name="logs"),
    path("<id:pk>/log/", views.log_download, name="log_download"),
    path("<id:pk>/stop/", views.stop, name="stop"),
    path("<id:pk>/retry/", views.retry, name="retry"),
    path("<id:pk>/clone/", views.clone, name="clone"),
    path("<id:pk>/delete/", views.delete, name="delete"),
    path("<id:pk>/download/", views.download, name="download"),
    path("<id:pk>/evaluation/", views.evaluation, name="evaluation"),
    path("<id:pk>/playground/", playground_views.playground_page, name="playground"),
    path("<id:pk>/playground/<id:run_pk>/", playground_views.playground_run, name="playground_run"),
]
