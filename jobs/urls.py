from django.urls import path

from jobs import views
from jobs.playground import views as playground_views

app_name = "jobs"
urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.new_job, name="new"),
    path("new/estimate/", views.estimate, name="estimate"),
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/progress/", views.progress, name="progress"),
    path("<int:pk>/metrics/", views.metrics, name="metrics"),
    path("<int:pk>/logs/", views.logs, name="logs"),
    path("<int:pk>/log/", views.log_download, name="log_download"),
    path("<int:pk>/stop/", views.stop, name="stop"),
    path("<int:pk>/retry/", views.retry, name="retry"),
    path("<int:pk>/clone/", views.clone, name="clone"),
    path("<int:pk>/delete/", views.delete, name="delete"),
    path("<int:pk>/download/", views.download, name="download"),
    path("<int:pk>/playground/", playground_views.playground_page, name="playground"),
    path("<int:pk>/playground/<int:run_pk>/", playground_views.playground_run, name="playground_run"),
]
