from django.contrib import admin
from django.urls import include, path, re_path

from afhost import views
from channels_app.exceptions import ApiError, api_endpoint


@api_endpoint("GET", "POST", "PUT", "PATCH", "DELETE")
async def api_not_found(request, path: str = ""):
    raise ApiError(404, f"Unknown endpoint: {request.method} {request.path}", code="not_found")


urlpatterns = [
    path("admin/", admin.site.urls),
    path("readyz", views.readyz, name="readyz"),
    path("readiness", views.readiness, name="readiness"),
    path("", include("channels_app.urls")),
    # The Responses API, at OpenAI's /v1 paths and at Azure AI Foundry's unprefixed ones.
    path("v1/", include(("channels_app.responses.urls", "responses_v1"))),
    path("", include(("channels_app.responses.urls", "responses"))),
    re_path(r"^v1/(?P<path>.*)$", api_not_found),
]
