"""Django's ASGI handler for machine routes, without the thread hops of the browser middleware.

In async mode every one of Django's own middlewares hops to a thread and back for each of its
hooks, and the handler gives every request a thread of its own for them: together about a
millisecond a request, several times what a stored create costs. Machine callers (API clients
with bearer keys, Telegram with its webhook secret) need no sessions, CSRF, users or messages,
so their routes go through ApiHandler: the same URLconf, views, request handling, host check,
body limit and error handling as every other route, with only API_MIDDLEWARE, Django's
security, common and clickjacking middleware (the same response headers as every other route),
whose hooks do no I/O and so are called on the event loop; the request signals reach every
receiver but Django's own tidying of a request thread, which has nothing to do there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, cast

from asgiref.sync import markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.cache import close_caches
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import reset_urlconf
from django.core.handlers.exception import convert_exception_to_response
from django.db import close_old_connections, reset_queries
from django.dispatch import Signal
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import set_script_prefix
from django.utils.deprecation import MiddlewareMixin

GetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


def on_the_loop(middleware_class: type[MiddlewareMixin]) -> Callable[[GetResponse], GetResponse]:
    """A middleware whose hooks do no I/O, called without leaving the event loop."""

    def factory(get_response: GetResponse) -> GetResponse:
        middleware = middleware_class(get_response)
        process_request = getattr(middleware, "process_request", None)
        process_response = getattr(middleware, "process_response", None)

        async def call(request: HttpRequest) -> HttpResponseBase:
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


# Django's own receivers of request_started and request_finished tidy up after a request's
# thread: its database connections and their query logs, its cache connections, its URLconf.
# An API view runs on the event loop, where Django opens no database connection (it refuses
# to), afhost uses no cache, and the URLconf set lives in the request's own context: there the
# two signals would cost 15-30 µs a request (5-8 % of a stored create) and do nothing.
DJANGO_TIDYING = frozenset({close_old_connections, reset_queries, close_caches, reset_urlconf})


def others_listen(signal: Signal) -> bool:
    """Whether a receiver other than Django's own tidying listens to `signal` from ApiHandler
    (looked up as Signal.send looks them up)."""
    sync_receivers, async_receivers = signal._live_receivers(ApiHandler)
    return bool(async_receivers) or not DJANGO_TIDYING.issuperset(sync_receivers)


def close_unheard(response: HttpResponseBase) -> None:
    """`response.close()` without its request_finished, which nobody but DJANGO_TIDYING hears."""
    for closer in response._resource_closers:  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):  # as HttpResponseBase.close
            closer()
    response._resource_closers.clear()  # type: ignore[attr-defined]
    response.closed = True


class ApiHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Callable] = []
        self._template_response_middleware: list[Callable] = []
        self._exception_middleware: list[Callable] = []
        handler: Callable = convert_exception_to_response(self._get_response_async)  # type: ignore[attr-defined]
        for middleware in reversed(API_MIDDLEWARE):
            handler = convert_exception_to_response(middleware(handler))
        self._middleware_chain = handler

    async def __call__(self, scope, receive, send) -> None:
        # No thread per request (Django's ThreadSensitiveContext): API views do their database
        # work in pool threads (afhost.db.in_thread), never on a thread of the request's own.
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send) -> None:
        """Django's ASGIHandler.handle, but for two things: the view runs in the request's own
        task, and request_started and request_finished are sent only when a receiver other
        than Django's own tidying listens (DJANGO_TIDYING): then as Django sends them."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        if others_listen(signals.request_started):
            await signals.request_started.asend(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if error_response is not None:
            body_file.close()
            await self.send_response(error_response, send)
            await self._close(error_response)
            return
        if request is None:  # create_request gives a request or an error response
            raise RequestAborted

        # As Django does: a client that disconnects cancels the view (a stream stops). The view
        # runs in this task, not in a second one raced against the listener by asyncio.wait,
        # which costs that task and the wait: some 7 µs, 2 % of a stored create.
        task = cast(asyncio.Task, asyncio.current_task())  # an ASGI request runs in a task
        answering = True

        def on_disconnect(listener: asyncio.Task) -> None:
            if answering and not listener.cancelled():
                task.cancel()

        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        listener.add_done_callback(on_disconnect)
        response = None
        try:
            response = await self.run_get_response(request)
            await self.send_response(response, send)
        except asyncio.CancelledError:
            if not listener.done() or listener.cancelled():
                raise  # cancelled from outside (the server is stopping), not by on_disconnect
            task.uncancel()
            with contextlib.suppress(RequestAborted):
                listener.result()
        finally:
            answering = False
            listener.cancel()
            body_file.close()
        await self._close(response)

    async def _close(self, response: HttpResponseBase | None) -> None:
        """Close the response (None: the view was cancelled) and send request_finished."""
        if others_listen(signals.request_finished):
            if response is None:
                await signals.request_finished.asend(sender=self.__class__)
            else:
                await sync_to_async(response.close)()
        elif response is not None:
            close_unheard(response)


# --- Guarding request bodies -------------------------------------------------------------------
#
# A body is read before a view runs, and reading it costs memory (and, past Django's
# FILE_UPLOAD_MAX_MEMORY_SIZE, a temporary file) for as long as its sender takes. So a guarded
# route decides from the headers alone whether to read it at all (its gate: a key, a secret, a
# declared length), stops reading one that grows past its limit, and gives up on one that takes
# longer than AFHOST_BODY_TIMEOUT. This needs a server that streams bodies to the application,
# as uvicorn does; daphne (Twisted) reads a whole body before the application sees the request.

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]


class Gate(Protocol):
    """What a guarded route lets in."""

    @property
    def max_body_bytes(self) -> int: ...

    async def check(self, scope: dict, headers: Mapping[str, str]) -> HttpResponse | None:
        """The answer to a request refused from its headers, or None to read its body."""

    def refuse_body(self, status: int) -> HttpResponse:
        """The answer to a body over the limit (413) or too slow to arrive (408)."""


def request_headers(scope: dict) -> dict[str, str]:
    """A request's headers, names in lower case (as ASGI gives them); a repeated header's values
    joined with commas, as Django joins them, so that a repeated credential is never read as
    one of its values."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin1"), raw_value.decode("latin1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


def declared_length(headers: Mapping[str, str]) -> int | None:
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


class BoundedBody:
    """The `receive` of a request whose body may hold `limit` bytes and must arrive within
    `timeout` seconds. Past either, it tells Django the client went away, so that Django stops
    reading and answers nothing, and keeps the status to answer instead (413 or 408). Once the
    body is in, messages pass through (Django then listens for a disconnect)."""

    def __init__(self, receive: Callable, *, limit: int, timeout: float) -> None:
        self._receive = receive
        self._limit = limit
        self._deadline = asyncio.get_running_loop().time() + timeout
        self._received = 0
        self._complete = False
        self.refused: int | None = None

    async def __call__(self) -> dict[str, Any]:
        if self._complete:
            return await self._receive()
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            return self._refuse(408)
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._limit:
                return self._refuse(413)
            self._complete = not message.get("more_body", False)
        return message

    def _refuse(self, status: int) -> dict[str, Any]:
        self.refused, self._complete = status, True
        return {"type": "http.disconnect"}


async def send_refusal(response: HttpResponse, send: Callable) -> None:
    """Answer with a small response, closing the connection: the rest of the body (if any) is
    never read, so the connection cannot carry another request."""
    headers = [(name.encode("latin1"), value.encode("latin1")) for name, value in response.items()]
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": [*headers, (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": response.content})


def guard(application: ASGIApp, gate: Gate) -> ASGIApp:
    """`application` (a Django handler) behind `gate`, with its request bodies bounded."""

    async def guarded(scope: dict, receive: Callable, send: Callable) -> None:
        refusal = await gate.check(scope, request_headers(scope))
        if refusal is not None:
            await send_refusal(refusal, send)
            return
        body = BoundedBody(receive, limit=gate.max_body_bytes, timeout=settings.AFHOST_BODY_TIMEOUT)
        await application(scope, body, send)
        if body.refused is not None:  # Django stopped reading, and answered nothing
            await send_refusal(gate.refuse_body(body.refused), send)

    return guarded
