"""POST /v1/responses (and /responses): creating a response, as a plain ASGI endpoint.

Creating is the hot path of the whole product. Django's ASGI handler spends about a millisecond
per request before a view runs (request signals and every synchronous middleware hop to a
thread), several times what the create itself costs, so asgi.py routes this one path here. It
uses the same schemas, services and rendering as the Django views; errors keep OpenAI's body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from afhost import execution, services
from afhost.db import in_thread
from afhost.exceptions import InvalidRunState, RunNotFound
from afhost.types import ChannelRequest
from channels_app.auth import ApiCaller, authenticate
from channels_app.exceptions import ApiError, not_found
from channels_app.responses.channel import ResponsesChannel
from channels_app.responses.rendering import response_object, sse_stream
from channels_app.responses.schemas import (
    CreateResponse,
    parse_body,
    parse_create,
    parse_response_id,
)

logger = logging.getLogger(__name__)

PATHS = frozenset({"/v1/responses", "/responses"})

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass(frozen=True, slots=True)
class Reply:
    """A JSON body, or a stream of SSE text."""

    body: dict | None = None
    events: AsyncIterator[str] | None = None


def _channel_request(params: CreateResponse, caller: ApiCaller) -> ChannelRequest:
    conversation_key = params.conversation
    if conversation_key is None and params.previous_response_id is None and caller.chat_key:
        conversation_key = f"chat:{caller.chat_key}"
    previous_run_id = None
    if params.previous_response_id is not None:
        previous_run_id = parse_response_id(params.previous_response_id)
        if previous_run_id is None:
            raise not_found(
                "Previous response", params.previous_response_id, param="previous_response_id"
            )
    attributes = {
        "previous_response_id": params.previous_response_id,
        "conversation": params.conversation,
        "user": params.user,
        "safety_identifier": params.safety_identifier,
        "call_id": caller.call_id,
        "api_key": str(caller.api_key.public_id),
    }
    return ChannelRequest(
        channel=ResponsesChannel.name,
        identity=caller.identity,
        input=params.input,
        stream=params.stream,
        background=params.background,
        store=params.store,
        model=params.model,
        instructions=params.instructions,
        options=params.options,
        metadata=params.metadata,
        attributes={key: value for key, value in attributes.items() if value is not None},
        previous_run_id=previous_run_id,
        conversation_key=conversation_key,
    )


async def create_response(headers: Mapping[str, str], body: bytes) -> Reply:
    """Create a response: blocking (JSON), streamed (SSE), or queued for a worker (background)."""
    caller = await authenticate(headers)
    params = parse_create(parse_body(body))
    try:
        request = _channel_request(params, caller)
        if params.background:
            started = await in_thread(services.start_run, request=request)
        elif request.continues_conversation:
            started = await in_thread(services.prepare_run, request=request)
        else:  # a new conversation: nothing to read, so no thread either
            started = services.prepare_run(request=request)
    except RunNotFound:
        raise not_found(
            "Previous response", params.previous_response_id, param="previous_response_id"
        ) from None
    except InvalidRunState:
        raise ApiError(
            400,
            f"Previous response with id '{params.previous_response_id}' is still in progress.",
            param="previous_response_id",
            code="previous_response_in_progress",
        ) from None
    run = started.run
    if params.background and params.stream:
        return Reply(events=sse_stream(execution.tail_run_events(run=run, after=-1)))
    if params.background:
        return Reply(body=response_object(run))
    if params.stream:
        return Reply(events=sse_stream(execution.stream_foreground_run(started)))
    return Reply(body=response_object(await execution.run_blocking(started)))


def _check_host(host: str) -> None:
    """ALLOWED_HOSTS, as Django's request handling would check it."""
    allowed = settings.ALLOWED_HOSTS or (
        [".localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else []
    )
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, allowed):
        raise ApiError(400, f"Invalid HTTP Host header: {host!r}.", code="invalid_host")


async def _read_body(receive: Receive) -> bytes:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "The request body is too large.", code="request_too_large")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send_json(send: Send, status: int, body: dict, extra: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON + (extra or [])})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def _send_events(receive: Receive, send: Send, events: AsyncIterator[str]) -> None:
    """Stream SSE chunks; if the client goes away, stop the stream (its generator cleans up)."""

    async def pump() -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        async for chunk in events:
            await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    pumping, watching = asyncio.ensure_future(pump()), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pumping, watching):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        await events.aclose()
    if pumping.done() and not pumping.cancelled() and pumping.exception():
        raise pumping.exception()


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["method"] != "POST":
        error = ApiError(
            405, f"Method {scope['method']} is not allowed here.", code="method_not_allowed"
        )
        await _send_json(send, 405, error.response_body(), [(b"allow", b"POST")])
        return
    headers = {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
    }
    try:
        _check_host(headers.get("host", ""))
        reply = await create_response(headers, await _read_body(receive))
    except ConnectionAbortedError:
        return
    except ApiError as error:
        await _send_json(send, error.status, error.response_body())
        return
    except Exception:
        logger.exception("unhandled error creating a response")
        error = ApiError(
            500, "The server had an error while processing your request.", type="server_error"
        )
        await _send_json(send, 500, error.response_body())
        return
    if reply.events is None:
        await _send_json(send, 200, reply.body)
    else:
        await _send_events(receive, send, reply.events)
