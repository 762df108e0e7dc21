from django.urls import path

from jobs import hub_views, views
from jobs.playground import views as playground_views
from llmtuner import converters  # noqa: F401  (registers <id:...>)

app_name = "jobs"
urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.new_job, name="new"),
    path("new/estimate/", views.estimate, name="estimate"),
    path("compare/", views.compare_jobs, name="compare"),
    path("new/hub-check/", views.hub_check, name="hub_check"),
    path("instance-types/", views.instance_types, name="instance_types"),
    path("<id:pk>/", views.detail, name="detail"),
    path("<id:pk>/progress/", views.progress, name="progress"),
    path("<id:pk>/metrics/", views.metrics, name="metrics"),
    path("<id:pk>/logs/", views.logs, name="logs"),
    path("<id:pk>/log/", views.log_download, name="log_download"),
    path("<id:pk>/stop/", views.stop, name="stop"),
    path("<id:pk>/retry/", views.retry, name="retry"),
    path("<id:pk>/resume/", views.resume_job, name="resume"),
    path("<id:pk>/clone/", views.clone, name="clone"),
    path("<id:pk>/continue/", views.continue_training, name="continue"),
    path("<id:pk>/delete/", views.delete, name="delete"),
    path("<id:pk>/download/", views.download, name="download"),
    path("<id:pk>/hub/", hub_views.hub_section, name="hub"),
    path("<id:pk>/hub/push/", hub_views.push, name="hub_push"),
    path("<id:pk>/evaluation/", views.evaluation, name="evaluation"),
    path("<id:pk>/playground/", playground_views.playground_page, name="playground"),
    path("<id:pk>/playground/<id:run_pk>/", playground_views.playground_run, name="playground_run"),
    path("<id:pk>/playground/<id:run_pk>/vote/", playground_views.vote, name="playground_vote"),
    path(
        "<id:pk>/playground/preferences.jsonl",
        playground_views.preference_export,
        name="playground_preferences",
    ),
]
