"""Errors of the wire protocols, answered with OpenAI's error body."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError
from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from linking.services import Denied, LinkRequired

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A request we refuse: becomes `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 (OpenAI's field name)
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def response_body(self) -> dict:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": error}

    def response(self) -> JsonResponse:
        return JsonResponse(self.response_body(), status=self.status)


def unavailable() -> JsonResponse:
    response = ApiError(
        503,
        "The server is overloaded or not ready yet. Please retry shortly.",
        type="server_error",
        code="service_unavailable",
    ).response()
    response["Retry-After"] = "1"
    return response


def refused(outcome: LinkRequired | Denied) -> ApiError:
    """403 for a turn authorization refused; the reason stays in the logs and the admin."""
    if isinstance(outcome, LinkRequired):
        return ApiError(
            403,
            "This caller must link an Entra ID account before talking to the agent: "
            "call with an Entra ID access token, or link through a chat channel.",
            type="permission_error",
            code="link_required",
        )
    return ApiError(403, outcome.message, type="permission_error", code="access_denied")


def not_found(what: str, value: str, *, param: str | None = None) -> ApiError:
    return ApiError(404, f"{what} with id '{value}' not found.", param=param, code="not_found")


View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]


def api_endpoint(*methods: str) -> Callable[[View], View]:
    """Wrap an async protocol view: method check, and every error as an OpenAI-style body.

    Nothing escapes as an HTML page or a traceback: unexpected exceptions are logged and
    answered with a JSON 500.
    """

    def decorate(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponseBase:
            if request.method not in methods:
                error = ApiError(
                    405, f"Method {request.method} is not allowed here.", code="method_not_allowed"
                )
                response = error.response()
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()
            except RequestDataTooBig:
                return ApiError(
                    413, "The request body is too large.", code="request_too_large"
                ).response()
            except OperationalError as exc:
                # No connection within the pool's timeout, or the database is down: the
                # connection (if any) went back in afhost.db.in_thread; the caller may retry.
                logger.warning("database unavailable in %s: %s", view.__name__, exc)
                return unavailable()
            except Exception:
                logger.exception("unhandled error in %s", view.__name__)
                return ApiError(
                    500,
                    "The server had an error while processing your request.",
                    type="server_error",
                ).response()

        # Machine clients authenticate with bearer keys, not cookies.
        return csrf_exempt(wrapper)

    return decorate
