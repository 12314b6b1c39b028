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

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from asgiref.sync import markcoroutinefunction
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import set_script_prefix
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
        # No thread per request (Django's ThreadSensitiveContext): API views do their database
        # work in pool threads (afhost.db.in_thread), never on a thread of the request's own.
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send) -> None:
        """Django's ASGIHandler.handle, but for one thing: request_started and request_finished
        are sent on the event loop, not from a thread hop each. Their receivers (Django's
        closing of stale connections, its query log) have nothing to do on the event loop,
        where no connection is ever opened; the two hops cost more than the rest of Django's
        request handling together."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            error_response.close()
            return

        async def process_request() -> HttpResponse:
            response = await self.run_get_response(request)
            with contextlib.suppress(asyncio.CancelledError):  # the client left while sending
                await self.send_response(response, send)
            return response

        # As Django does: a client that disconnects cancels the view (a stream stops).
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                with contextlib.suppress(RequestAborted):
                    task.result()
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            signals.request_finished.send(sender=self.__class__)
        else:
            response.close()
        body_file.close()
