from django.urls import path

from channels_app.responses import views

# OpenAI's paths carry no trailing slash; clients call them exactly as written here.
urlpatterns = [
    path("responses", views.response_create, name="response_create"),
    path("responses/<str:response_id>", views.response_detail, name="response_detail"),
    path("responses/<str:response_id>/cancel", views.response_cancel, name="response_cancel"),
    path(
        "responses/<str:response_id>/input_items",
        views.response_input_items,
        name="response_input_items",
    ),
    path("models", views.model_list, name="model_list"),
    # Model names may hold slashes (meta-llama/Llama-3.2-3B-Instruct).
    path("models/<path:model_id>", views.model_detail, name="model_detail"),
]
