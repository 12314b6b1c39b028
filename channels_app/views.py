"""What the API routes answer when no view of theirs does: OpenAI's error body, not HTML."""

from __future__ import annotations

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.views import defaults

from channels_app.exceptions import ApiError, api_endpoint

API_PREFIXES = ("/v1/", "/responses")


@api_endpoint("GET", "POST", "PUT", "PATCH", "DELETE")
async def api_not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    raise ApiError(404, f"Unknown endpoint: {request.method} {request.path}", code="not_found")


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 400 (a host outside ALLOWED_HOSTS, a malformed request) for any route."""
    if not request.path.startswith(API_PREFIXES):
        return defaults.bad_request(request, exception)
    if isinstance(exception, DisallowedHost):
        host = request.META.get("HTTP_HOST", "")
        return ApiError(400, f"Invalid HTTP Host header: {host!r}.", code="invalid_host").response()
    return ApiError(400, "The request could not be understood.", code="bad_request").response()
