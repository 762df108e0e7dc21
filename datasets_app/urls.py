from django.urls import path

from datasets_app import views

app_name = "datasets"

urlpatterns = [
    path("", views.dataset_list, name="list"),
    path("upload/", views.upload, name="upload"),
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/status/", views.status, name="status"),
    path("<int:pk>/prepare/", views.prepare_again, name="prepare"),
    path("<int:pk>/rename/", views.rename, name="rename"),
    path("<int:pk>/delete/", views.delete, name="delete"),
    path("<int:pk>/samples/", views.samples, name="samples"),
    path("<int:pk>/download/<str:split>/", views.download, name="download"),
]
