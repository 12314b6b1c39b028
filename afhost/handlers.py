"""Django's ASGI handler for the API routes, without the thread hops of the browser middleware.

In async mode every one of Django's own middlewares hops to a thread and back for each of its
hooks, and the handler gives every request a thread of its own for them: together about a
millisecond a request, several times what a stored create costs. API callers authenticate with
bearer keys and need no sessions, CSRF, users or messages, so their routes go through
ApiHandler: the same URLconf, views, request handling, host check, body limit and error
handling as every other route, with only API_MIDDLEWARE, Django's security, common and
clickjacking middleware (the same response headers as every other route), whose hooks do no
I/O and so are called on the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import markcoroutinefunction
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.deprecation import MiddlewareMixin

GetResponse = Callable[[HttpRequest], Awaitable[HttpResponse]]


def on_the_loop(middleware_class: type[MiddlewareMixin]) -> Callable[[GetResponse], GetResponse]:
    """A middleware whose hooks do no I/O, called without leaving the event loop."""

    def factory(get_response: GetResponse) -> GetResponse:
        middleware = middleware_class(get_response)
        process_request = getattr(middleware, "process_request", None)
        process_response = getattr(middleware, "process_response", None)

        async def call(request: HttpRequest) -> HttpResponse:
            response = process_request(request) if process_request else None
            response = response or await get_response(request)
            return process_response(request, response) if process_response else response

        return markcoroutinefunction(call)

    return factory


API_MIDDLEWARE = [
    on_the_loop(SecurityMiddleware),
    on_the_loop(CommonMiddleware),
    on_the_loop(XFrameOptionsMiddleware),
]


class ApiHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware, self._template_response_middleware = [], []
        self._exception_middleware = []
        handler = convert_exception_to_response(self._get_response_async)
        for middleware in reversed(API_MIDDLEWARE):
            handler = convert_exception_to_response(middleware(handler))
        self._middleware_chain = handler

    async def __call__(self, scope, receive, send) -> None:
        # No thread per request: API views do their database work in pool threads
        # (afhost.db.in_thread), so the request signals' few calls share Django's one thread.
        await self.handle(scope, receive, send)
