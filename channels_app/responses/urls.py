from django.urls import path

from channels_app.responses import views

# OpenAI's paths carry no trailing slash; clients call them exactly as written here.
# POST /responses (create) is answered before Django: see channels_app/responses/endpoint.py.
urlpatterns = [
    path("responses/<str:response_id>", views.response_detail, name="response_detail"),
    path("responses/<str:response_id>/cancel", views.response_cancel, name="response_cancel"),
    path(
        "responses/<str:response_id>/input_items",
        views.response_input_items,
        name="response_input_items",
    ),
]
