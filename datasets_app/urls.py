from django.urls import path

from datasets_app import views
from llmtuner import converters  # noqa: F401  (registers <id:...>)

app_name = "datasets"

urlpatterns = [
    path("", views.dataset_list, name="list"),
    path("upload/", views.upload, name="upload"),
    path("<id:pk>/", views.detail, name="detail"),
    path("<id:pk>/status/", views.status, name="status"),
    path("<id:pk>/prepare/", views.prepare_again, name="prepare"),
    path("<id:pk>/rename/", views.rename, name="rename"),
    path("<id:pk>/delete/", views.delete, name="delete"),
    path("<id:pk>/samples/", views.samples, name="samples"),
    path("<id:pk>/download/<str:split>/", views.download, name="download"),
]
