from django.urls import path

from accounts import views

urlpatterns = [
    path("", views.home, name="home"),
    path("settings/", views.profile, name="profile"),
    path("settings/hub-token/", views.save_token, name="hub_token_save"),
    path("settings/hub-token/delete/", views.delete_token, name="hub_token_delete"),
]
