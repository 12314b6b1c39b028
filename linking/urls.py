from django.urls import path

from linking import views

app_name = "linking"

urlpatterns = [
    path("link/", views.page, name="page"),
    path("link/start/", views.start, name="start"),
    path("link/done/", views.done, name="done"),
    path("link/failed/", views.failed, name="failed"),
    # Last: the token is any string (links the bot sent).
    path("link/<str:token>/", views.open_link, name="open"),
]
