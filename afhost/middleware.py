"""Request middleware."""

from __future__ import annotations

from collections.abc import Callable

from asgiref.sync import iscoroutinefunction
from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware


def _refuse_nul(request: HttpRequest) -> None:
    if "\x00" in request.path:
        raise BadRequest("a NUL character in the path")
    for name, values in request.GET.lists():
        if "\x00" in name or any("\x00" in value for value in values):
            raise BadRequest(f"a NUL character in the query parameter {name!r}")


@sync_and_async_middleware
def refuse_nul_characters(get_response: Callable) -> Callable:
    """Answer 400 to a NUL character in the path or a query parameter.

    PostgreSQL stores no NUL in text, so a lookup holding one (an admin list filter or search,
    a text primary key in an admin URL) fails with a 500; no real request carries one. Django
    turns BadRequest into its 400 page and a django.request warning.
    """
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponse:
            _refuse_nul(request)
            return await get_response(request)

        return async_middleware

    def middleware(request: HttpRequest) -> HttpResponse:
        _refuse_nul(request)
        return get_response(request)

    return middleware
