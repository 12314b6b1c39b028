"""The OpenAI Responses API: create (blocking, streamed, background), retrieve (and resume a
stream), cancel, delete, input items."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from afhost import about, execution, selectors, services
from afhost.db import in_thread
from afhost.exceptions import ConversationBusy, HistoryTooLong, InvalidRunState, RunNotFound
from afhost.models import Run
from afhost.types import ChannelRequest
from channels_app import turns
from channels_app.auth import ApiCaller, check_response_target, request_caller
from channels_app.exceptions import ApiError, api_endpoint, not_found, refused
from channels_app.responses.channel import ResponsesChannel
from channels_app.responses.rendering import input_items, response_object, sse_stream
from channels_app.responses.schemas import (
    CreateResponse,
    parse_body,
    parse_create,
    parse_response_id,
)

_CANCEL_REFUSALS = {
    "synchronous": "Cannot cancel a synchronous response.",
    Run.Status.COMPLETED: "Cannot cancel a completed response.",
    Run.Status.FAILED: "Cannot cancel a failed response.",
    Run.Status.INCOMPLETE: "Cannot cancel an incomplete response.",
}


def _event_stream(batches: AsyncGenerator[list[dict], None]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(sse_stream(batches), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


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
        "api_key": None if caller.api_key is None else str(caller.api_key.public_id),
    }
    check_response_target(caller, params.response_target)
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
        truncation=params.truncation,
        response_target=params.response_target,
        verified_claims=caller.verified_claims,
    )


def _parse_create(body: bytes, caller: ApiCaller) -> tuple[CreateResponse, ChannelRequest]:
    params = parse_create(parse_body(body))
    return params, _channel_request(params, caller)


@api_endpoint("POST")
async def response_create(request: HttpRequest) -> HttpResponseBase:
    """Create a response: blocking (JSON), streamed (SSE), or queued for a worker (background)."""
    caller = await request_caller(request)
    body = request.body
    large = len(body) > turns.INLINE_BODY_BYTES
    if large:
        params, channel_request = await asyncio.to_thread(_parse_create, body, caller)
    else:
        params, channel_request = _parse_create(body, caller)
    try:
        turn = await turns.start_turn(channel_request, large=large)
    except RunNotFound:
        raise not_found(
            "Previous response", params.previous_response_id or "", param="previous_response_id"
        ) from None
    except InvalidRunState:
        raise ApiError(
            400,
            f"Previous response with id '{params.previous_response_id}' is still in progress.",
            param="previous_response_id",
            code="previous_response_in_progress",
        ) from None
    except ConversationBusy:
        raise ApiError(
            400,
            "Another process is currently operating on this conversation. "
            "Please retry in a few seconds.",
            param="conversation",
            code="conversation_locked",
        ) from None
    except turns.TurnRefused as exc:
        raise refused(exc.outcome) from None
    except HistoryTooLong:
        raise ApiError(
            400, services.HISTORY_TOO_LONG, param="input", code="context_length_exceeded"
        ) from None
    if params.stream:
        return _event_stream(turn.stream())
    if params.background:
        return JsonResponse(response_object(turn.run))
    return JsonResponse(response_object(await turn.run_blocking()))


async def _visible_run(caller: ApiCaller, response_id: str) -> Run:
    public_id = parse_response_id(response_id)
    try:
        if public_id is None:
            raise RunNotFound("malformed id")
        return await in_thread(
            selectors.get_visible_run,
            isolation_key=caller.identity.isolation_key,
            public_id=public_id,
        )
    except RunNotFound:
        raise not_found("Response", response_id, param="response_id") from None


@api_endpoint("GET", "DELETE")
async def response_detail(request: HttpRequest, response_id: str) -> HttpResponseBase:
    caller = await request_caller(request)
    run = await _visible_run(caller, response_id)
    if request.method == "DELETE":
        try:
            await in_thread(services.delete_run, run=run)
        except InvalidRunState:
            raise ApiError(
                400, "Cannot delete an in-flight response.", code="response_in_flight"
            ) from None
        return JsonResponse({"id": response_id, "object": "response.deleted", "deleted": True})
    if request.GET.get("stream", "false").lower() != "true":
        return JsonResponse(response_object(run))
    if not run.is_background:
        raise ApiError(
            400,
            "Cannot stream a response that was not created with background=true.",
            param="stream",
        )
    if not run.is_streamed:
        raise ApiError(
            400, "Cannot stream a response that was not created with stream=true.", param="stream"
        )
    raw_after = request.GET.get("starting_after", "-1")
    try:
        after = int(raw_after)
    except ValueError:
        raise ApiError(
            400,
            f"Invalid value for 'starting_after': expected an integer, got '{raw_after}'.",
            param="starting_after",
            code="invalid_value",
        ) from None
    return _event_stream(execution.tail_run_events(run=run, after=after))


@api_endpoint("POST")
async def response_cancel(request: HttpRequest, response_id: str) -> HttpResponseBase:
    caller = await request_caller(request)
    run = await _visible_run(caller, response_id)
    try:
        run = await in_thread(services.cancel_run, run=run)
    except InvalidRunState as exc:
        raise ApiError(
            400,
            _CANCEL_REFUSALS.get(exc.message, "Cannot cancel this response."),
            code="response_not_cancellable",
        ) from None
    return JsonResponse(response_object(run))


@api_endpoint("GET")
async def response_input_items(request: HttpRequest, response_id: str) -> HttpResponseBase:
    caller = await request_caller(request)
    run = await _visible_run(caller, response_id)
    order = request.GET.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(
            400,
            f"Invalid value for 'order': expected 'asc' or 'desc', got '{order}'.",
            param="order",
            code="invalid_value",
        )
    raw_limit = request.GET.get("limit", "20")
    if not raw_limit.isdecimal() or not 1 <= int(raw_limit) <= 100:
        raise ApiError(
            400,
            f"Invalid value for 'limit': expected an integer from 1 to 100, got '{raw_limit}'.",
            param="limit",
            code="invalid_value",
        )
    items = input_items(run.input_messages)
    if order == "desc":
        items.reverse()
    ids = [item["id"] for item in items]
    for cursor, keep_after in (("after", True), ("before", False)):
        if value := request.GET.get(cursor):
            if value not in ids:
                raise not_found("Item", value, param=cursor)
            position = ids.index(value)
            items, ids = (
                (items[position + 1 :], ids[position + 1 :])
                if keep_after
                else (items[:position], ids[:position])
            )
    page = items[: int(raw_limit)]
    return JsonResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > len(page),
        }
    )


# --- Models: the hosted agent, listed as OpenAI lists its models --------------------------------


def _model_object() -> dict:
    return {
        "id": about.hosted_model_id(),
        "object": "model",
        "created": about.STARTED_AT,
        "owned_by": "afhost",
    }


@api_endpoint("GET")
async def model_list(request: HttpRequest) -> HttpResponseBase:
    """The one model this server answers as: the hosted agent (any `model` a create names is
    answered by it)."""
    await request_caller(request)
    return JsonResponse({"object": "list", "data": [_model_object()]})


@api_endpoint("GET")
async def model_detail(request: HttpRequest, model_id: str) -> HttpResponseBase:
    await request_caller(request)
    model = _model_object()
    if model_id != model["id"]:
        raise ApiError(
            404,
            f"The model '{model_id}' does not exist or you do not have access to it.",
            code="model_not_found",
        )
    return JsonResponse(model)
