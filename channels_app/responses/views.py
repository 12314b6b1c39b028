"""The OpenAI Responses API, after creation: retrieve (and resume a stream), cancel, delete, input
items. Creating a response is endpoint.py's."""

from __future__ import annotations

from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

from afhost import execution, selectors, services
from afhost.exceptions import InvalidRunState, RunNotFound
from afhost.models import Run
from channels_app.auth import ApiCaller, authenticate
from channels_app.exceptions import ApiError, api_endpoint, not_found
from channels_app.responses.rendering import input_items, response_object, sse_stream
from channels_app.responses.schemas import parse_response_id

_CANCEL_REFUSALS = {
    "synchronous": "Cannot cancel a synchronous response.",
    Run.Status.COMPLETED: "Cannot cancel a completed response.",
    Run.Status.FAILED: "Cannot cancel a failed response.",
    Run.Status.INCOMPLETE: "Cannot cancel an incomplete response.",
}


def _event_stream(batches: AsyncIterator[list[dict]]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(sse_stream(batches), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _visible_run(caller: ApiCaller, response_id: str) -> Run:
    public_id = parse_response_id(response_id)
    try:
        if public_id is None:
            raise RunNotFound("malformed id")
        return await sync_to_async(selectors.get_visible_run)(
            isolation_key=caller.identity.isolation_key, public_id=public_id
        )
    except RunNotFound:
        raise not_found("Response", response_id, param="response_id") from None


@api_endpoint("GET", "DELETE")
async def response_detail(request: HttpRequest, response_id: str) -> HttpResponse:
    caller = await authenticate(request.headers)
    run = await _visible_run(caller, response_id)
    if request.method == "DELETE":
        try:
            await sync_to_async(services.delete_run)(run=run)
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
async def response_cancel(request: HttpRequest, response_id: str) -> HttpResponse:
    caller = await authenticate(request.headers)
    run = await _visible_run(caller, response_id)
    try:
        run = await sync_to_async(services.cancel_run)(run=run)
    except InvalidRunState as exc:
        raise ApiError(
            400,
            _CANCEL_REFUSALS.get(exc.message, "Cannot cancel this response."),
            code="response_not_cancellable",
        ) from None
    return JsonResponse(response_object(run))


@api_endpoint("GET")
async def response_input_items(request: HttpRequest, response_id: str) -> HttpResponse:
    caller = await authenticate(request.headers)
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
