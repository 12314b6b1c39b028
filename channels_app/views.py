"""What the API routes answer when no view of theirs does: OpenAI's error body, not HTML."""

from __future__ import annotations

from collections.abc import Mapping

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.views import defaults

from afhost.handlers import declared_length
from channels_app.auth import SCOPE_CALLER, authenticate
from channels_app.exceptions import ApiError, api_endpoint, unavailable

API_PREFIXES = ("/v1/", "/responses", "/invocations")


class ApiGate:
    """What the API routes refuse before reading a body (afhost.handlers.guard): a caller
    without a valid key or access token (401) or naming users it may not (400, 403), and a body
    declared over AFHOST_MAX_REQUEST_BYTES (413). A key lookup and a token's signing keys are
    cached, and the caller it lets in is handed to the view (`auth.request_caller`)."""

    @property
    def max_body_bytes(self) -> int:
        return settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    async def check(self, scope: dict, headers: Mapping[str, str]) -> HttpResponse | None:
        try:
            scope[SCOPE_CALLER] = await authenticate(headers)
        except ApiError as exc:
            return exc.response()
        except OperationalError:
            return unavailable()
        if (declared_length(headers) or 0) > self.max_body_bytes:
            return self.refuse_body(413)
        return None

    def refuse_body(self, status: int) -> HttpResponse:
        if status == 413:
            error = ApiError(413, "The request body is too large.", code="request_too_large")
        else:
            error = ApiError(
                408, "The request body took too long to arrive.", code="request_timeout"
            )
        return error.response()


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
