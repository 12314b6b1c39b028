from django.urls import path

from channels_app.invocations import views

app_name = "invocations"

# Microsoft's host's paths, without trailing slashes.
urlpatterns = [
    path("invocations", views.invocation_create, name="create"),
    path("invocations/<str:invocation_id>", views.invocation_detail, name="detail"),
    path("invocations/<str:invocation_id>/cancel", views.invocation_cancel, name="cancel"),
]
