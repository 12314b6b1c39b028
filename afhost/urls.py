from django.contrib import admin
from django.urls import include, path, re_path

from afhost import views
from channels_app.views import api_not_found

handler400 = "channels_app.views.bad_request"

admin.site.site_header = "afhost administration"
admin.site.site_title = "afhost admin"
admin.site.site_url = "/"  # "View site": the home page

urlpatterns = [
    # The Responses API, at OpenAI's /v1 paths and at Azure AI Foundry's unprefixed ones; first,
    # since they are the busiest routes.
    path("v1/", include(("channels_app.responses.urls", "responses_v1"))),
    path("", include(("channels_app.responses.urls", "responses"))),
    re_path(r"^v1/(?P<path>.*)$", api_not_found),
    # The Invocations protocol of Azure AI hosted agents (and its WebSocket, in afhost.asgi).
    path("", include("channels_app.invocations.urls")),
    re_path(r"^invocations/(?P<path>.*)$", api_not_found),
    # The delivery dashboard (under admin/) and the operator API; before the admin's own URLs.
    path("", include("delivery.urls")),
    path("admin/", admin.site.urls),
    path("", views.home, name="home"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("readyz", views.readyz, name="readyz"),
    path("readiness", views.readiness, name="readiness"),
    path("", include("channels_app.urls")),
    path("", include("linking.urls")),
    # The link ceremony's sign-in: /oauth/complete/azuread-v2-tenant-oauth2/ is the redirect URI.
    path("oauth/", include("social_django.urls", namespace="social")),
]
