"""The Invocations protocol of Azure AI hosted agents: invoke (blocking, streamed, or
long-running), and a long-running invocation's status and cancel.

Bodies and headers are those of Microsoft's hosts (azure-ai-agentserver-invocations with
agent-framework-foundry-hosting); README.md lists where afhost differs, and why.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from agent_framework import Message
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import reverse

from afhost import selectors, services
from afhost.db import in_thread
from afhost.exceptions import ConversationBusy, InvalidRunState, RunNotFound
from afhost.models import Run
from afhost.types import ChannelRequest
from channels_app import turns
from channels_app.auth import ApiCaller, check_response_target, request_caller
from channels_app.exceptions import ApiError, api_endpoint, not_found, refused
from channels_app.invocations.channel import InvocationsChannel
from channels_app.invocations.rendering import (
    STATUSES,
    answer,
    failure_message,
    invocation_status,
    sse,
)
from channels_app.invocations.schemas import (
    InvalidInvocation,
    InvocationBody,
    issued_id,
    parse_invocation,
    session_for,
    valid_id,
)
from channels_app.responses.rendering import sse_stream

INVOCATION_ID = "x-agent-invocation-id"
SESSION_ID = "x-agent-session-id"
SESSION_CONFLICT = "Another request advanced this agent session; reload before retrying."


def invocation_request(
    body: InvocationBody, caller: ApiCaller, *, invocation_id: str, session_id: str
) -> ChannelRequest:
    """The turn an invocation asks for: the session is the caller's conversation."""
    check_response_target(caller, body.response_target)
    attributes = {
        "session_id": session_id,
        "call_id": caller.call_id,
        "api_key": None if caller.api_key is None else str(caller.api_key.public_id),
    }
    return ChannelRequest(
        channel=InvocationsChannel.name,
        identity=caller.identity,
        input=[Message("user", [body.message])],
        stream=body.stream,
        background=body.background,
        options=body.options,
        attributes={key: value for key, value in attributes.items() if value is not None},
        conversation_key=f"session:{session_id}",
        response_target=body.response_target,
        verified_claims=caller.verified_claims,
        invocation_id=invocation_id,
    )


async def start(request: ChannelRequest, *, wait: bool = True) -> turns.Turn:
    """Start the turn; one in a session another turn is in waits for it, as Microsoft's host
    does (up to AFHOST_RUN_TIMEOUT, the longest that turn may take); without `wait`, it is
    refused at once."""
    try:
        return await turns.start_turn(request, wait=settings.AFHOST_RUN_TIMEOUT if wait else 0)
    except ConversationBusy:
        raise InvalidInvocation(SESSION_CONFLICT, status=409) from None
    except turns.TurnRefused as exc:
        raise refused(exc.outcome) from None


@api_endpoint("POST")
async def invocation_create(request: HttpRequest) -> HttpResponseBase:
    caller = await request_caller(request)
    invocation_id = issued_id(request.headers.get(INVOCATION_ID))
    session = session_for(request.GET.get("agent_session_id"))
    try:
        response = await _invoke(request, caller, invocation_id, session)
    except InvalidInvocation as exc:
        response = JsonResponse({"error": exc.message}, status=exc.status)
    except ApiError as exc:
        response = exc.response()
    response[INVOCATION_ID], response[SESSION_ID] = invocation_id, session
    return response


async def _invoke(
    request: HttpRequest, caller: ApiCaller, invocation_id: str, session: str
) -> HttpResponseBase:
    if len(request.body) > turns.INLINE_BODY_BYTES:
        body = await asyncio.to_thread(parse_invocation, request.body)
    else:
        body = parse_invocation(request.body)
    turn_request = invocation_request(body, caller, invocation_id=invocation_id, session_id=session)
    if body.stream:
        try:
            turn = await start(turn_request, wait=False)
        except InvalidInvocation as exc:
            if exc.status != 409:
                raise
            return _event_stream(_after_the_turn_before(turn_request))
        return _event_stream(turn.stream())
    turn = await start(turn_request)
    if body.background:
        response = JsonResponse({"invocation_id": invocation_id, "status": "running"}, status=202)
        response["Location"] = reverse("invocations:detail", args=[invocation_id])
        return response
    run = await turn.run_blocking()
    if run.status == Run.Status.FAILED:
        return JsonResponse({"error": failure_message(run.error)}, status=500)
    return JsonResponse(answer(run))


def _event_stream(batches: AsyncGenerator[list[dict], None]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        sse_stream(batches, encode=sse), content_type="text/event-stream; charset=utf-8"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _after_the_turn_before(request: ChannelRequest) -> AsyncGenerator[list[dict], None]:
    """A streamed turn in a session another turn is in: the stream begins at once (its headers,
    then keep-alives) and the turn waits inside it, as in Microsoft's host; a session still busy
    when a turn may take no longer ends the stream with Microsoft's conflict frame."""
    try:
        turn = await start(request)
    except (InvalidInvocation, ApiError) as exc:
        code = "session_conflict" if exc.status == 409 else "refused"
        yield [
            {"event": "error", "data": {"message": exc.message, "code": code, "status": exc.status}}
        ]
        return
    async with contextlib.aclosing(turn.stream()) as batches:
        async for batch in batches:
            yield batch


async def _invocation(caller: ApiCaller, invocation_id: str) -> Run:
    try:
        return await in_thread(
            selectors.get_invocation,
            isolation_key=caller.identity.isolation_key,
            invocation_id=invocation_id,
        )
    except RunNotFound:
        raise not_found("Invocation", invocation_id) from None


@api_endpoint("GET")
async def invocation_detail(request: HttpRequest, invocation_id: str) -> HttpResponseBase:
    """A long-running (or any stored) invocation's status, and its output once it has one."""
    caller = await request_caller(request)
    try:
        response = JsonResponse(invocation_status(await _invocation(caller, invocation_id)))
    except ApiError as exc:
        response = exc.response()
    return _naming(response, invocation_id)


@api_endpoint("POST")
async def invocation_cancel(request: HttpRequest, invocation_id: str) -> HttpResponseBase:
    caller = await request_caller(request)
    try:
        response = JsonResponse(await _cancel(caller, invocation_id))
    except ApiError as exc:
        response = exc.response()
    except InvalidInvocation as exc:
        response = JsonResponse({"error": exc.message}, status=exc.status)
    return _naming(response, invocation_id)


async def _cancel(caller: ApiCaller, invocation_id: str) -> dict:
    run = await _invocation(caller, invocation_id)
    status = run.status
    if not run.is_terminal:
        try:
            status = (await in_thread(services.cancel_run, run=run)).status
        except InvalidRunState as exc:
            if exc.message == "synchronous":
                raise InvalidInvocation(
                    "Only a long-running invocation can be cancelled."
                ) from None
            status = exc.message  # it ended meanwhile
    body = {"invocation_id": invocation_id, "status": STATUSES[status]}
    if status != Run.Status.CANCELLED:
        body["error"] = f"invocation already {body['status']}"
    return body


def _naming(response: HttpResponse, invocation_id: str) -> HttpResponseBase:
    """Every answer about an invocation names it, as Microsoft's host does (a valid id)."""
    if valid_id(invocation_id):
        response[INVOCATION_ID] = invocation_id
    return response
