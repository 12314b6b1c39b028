"""Runs as OpenAI Responses objects and streaming events, built with the openai package's types."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from typing import Any, get_args

from agent_framework import AgentResponseUpdate, Content, Message
from django.conf import settings
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseQueuedEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)
from openai.types.responses.response_item import ResponseItem
from openai.types.responses.response_output_item import ResponseOutputItem
from pydantic import BaseModel, TypeAdapter

from afhost.models import Run, response_id
from afhost.types import HostedRunResult, new_item_id

_TERMINAL_EVENTS = {
    "completed": ResponseCompletedEvent,
    "incomplete": ResponseIncompleteEvent,
    "failed": ResponseFailedEvent,
}
_response_items = TypeAdapter(list[ResponseItem])


@functools.cache
def _type_of(model: type[BaseModel]) -> str:
    return model.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]


_OUTPUT_ITEM_TYPES = {_type_of(model): model for model in get_args(get_args(ResponseOutputItem)[0])}


def _output_item(item: dict) -> BaseModel:
    """An output item validated as the type its `type` names: pydantic cannot see the SDK's
    discriminator, so validating the 28-way union itself tries member after member (~50 µs)."""
    return _OUTPUT_ITEM_TYPES[item["type"]](**item)


def _dump(model: BaseModel) -> dict:
    return model.model_dump(mode="json", exclude_none=True)


def _whole_seconds(response: dict) -> dict:
    # The SDK types these as floats; OpenAI sends whole seconds.
    for name in ("created_at", "completed_at"):
        if name in response:
            response[name] = int(response[name])
    return response


def response_object(
    run: Run,
    *,
    status: str | None = None,
    output: list[dict] | None = None,
    result: HostedRunResult | None = None,
) -> dict:
    """The run as an OpenAI `Response`; streams render it mid-run with the keyword overrides.

    Built as the JSON object itself, not validated through the SDK's model and dumped again:
    every value is ours (the output items too, built here), and that round trip cost more than
    the rest of rendering a blocking create. tests/test_responses_rendering.py holds every
    shape to the SDK's `Response`; a stream's events are still built with its types.
    """
    status = status or run.status
    usage, error, finish_reason = run.usage, run.error, run.finish_reason
    completed_at = run.completed_at.timestamp() if run.completed_at else None
    if result is not None:
        usage, error, finish_reason = result.usage, result.error, result.finish_reason
        completed_at = time.time()
    attributes = run.attributes
    fields = {
        "id": response_id(run.public_id),
        "object": "response",
        "created_at": int(run.created_at.timestamp()),
        "completed_at": int(completed_at)
        if completed_at and status == Run.Status.COMPLETED
        else None,
        "status": status,
        "background": run.is_background,
        "model": run.model or "afhost",
        "instructions": run.instructions or None,
        "metadata": run.metadata,
        "output": run.output_items if output is None else output,
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
        "temperature": run.options.get("temperature"),
        "top_p": run.options.get("top_p"),
        "max_output_tokens": run.options.get("max_tokens"),
        "previous_response_id": attributes.get("previous_response_id"),
        "conversation": {"id": attributes["conversation"]}
        if attributes.get("conversation")
        else None,
        "user": attributes.get("user"),
        "safety_identifier": attributes.get("safety_identifier"),
        "store": run.is_stored,
        "truncation": run.truncation,
        "usage": _usage(usage) if usage and status in Run.TERMINAL_STATUSES else None,
        "error": error if status == Run.Status.FAILED else None,
        "incomplete_details": {"reason": finish_reason}
        if status == Run.Status.INCOMPLETE and finish_reason
        else None,
    }
    return {name: value for name, value in fields.items() if value is not None}


def _usage(usage: dict) -> dict:
    return {
        "input_tokens": usage.get("input_tokens", 0),
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.get("output_tokens", 0),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens", 0),
    }


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str) -> dict:
    content = [_text_part(text)] if status != "in_progress" else []
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": status,
        "content": content,
    }


def _function_call_item(item_id: str, content: Content, arguments: str, status: str) -> dict:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": content.call_id,
        "name": content.name,
        "arguments": arguments,
        "status": status,
    }


def _arguments(content: Content) -> str:
    arguments = content.arguments
    if arguments is None:
        return ""
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _result_text(content: Content) -> str:
    result = content.result
    if result is None:
        return content.exception or ""
    return result if isinstance(result, str) else json.dumps(result, default=str)


def _function_output_item(item_id: str, content: Content) -> dict:
    return {
        "type": "function_call_output",
        "id": item_id,
        "call_id": content.call_id,
        "output": _result_text(content),
        "status": "completed",
    }


def _message_items(message: Message) -> list[dict]:
    """Items of one finished message: each run of consecutive texts becomes one message item.

    Item ids derive from the message id and the content's position, so rendering a stored
    message again (input_items pages) gives the same ids.
    """
    base = message.message_id or new_item_id("msg")
    items: list[dict] = []
    texts: list[str] = []
    for position, content in enumerate([*message.contents, None]):
        if content is not None and content.type == "text":
            texts.append(content.text or "")
            continue
        if texts:
            count = sum(item["type"] == "message" for item in items)
            item_id = f"{base}_{count}" if count else base
            items.append(_message_item(item_id, "".join(texts), "completed"))
            texts = []
        if content is None:
            break
        if content.type == "function_call":
            item_id = f"fc_{base}_{position}"
            items.append(_function_call_item(item_id, content, _arguments(content), "completed"))
        elif content.type == "function_result":
            items.append(_function_output_item(f"fco_{base}_{position}", content))
    return items


def output_items(messages: Iterable[Message]) -> list[dict]:
    """Output items of a finished run, in order."""
    return [item for message in messages for item in _message_items(message)]


def _input_part(content: Content) -> dict | None:
    if content.type == "text":
        return {"type": "input_text", "text": content.text or ""}
    if content.type in ("data", "uri"):
        url = content.uri or ""
        if (content.media_type or "").startswith("image/"):
            return {"type": "input_image", "image_url": url, "detail": "auto"}
        if url.startswith("data:"):
            return {
                "type": "input_file",
                "file_data": url.split(",", 1)[1],
                "filename": content.name,
            }
        return {"type": "input_file", "file_url": url}
    return None


def input_items(message_dicts: list[dict]) -> list[dict]:
    """The input of a run as Responses input items (for /input_items), oldest first."""
    items: list[dict] = []
    for message in map(Message.from_dict, message_dicts):
        if message.role == "tool":
            items.extend(
                _function_output_item(f"{message.message_id}_{i}", c)
                for i, c in enumerate(message.contents)
            )
        elif message.role == "assistant":
            items.extend(output_items([message]))
        else:
            parts = [part for part in map(_input_part, message.contents) if part is not None]
            items.append(
                {
                    "type": "message",
                    "id": message.message_id,
                    "role": message.role,
                    "status": "completed",
                    "content": parts,
                }
            )
    return _response_items.dump_python(
        _response_items.validate_python(items), mode="json", exclude_none=True
    )


class ResponsesRenderer:
    """Streams one run as the standard Responses event sequence, numbered from `next_sequence`."""

    def __init__(self, run: Run, *, next_sequence: int) -> None:
        self.run = run
        self.sequence = next_sequence
        self.items: list[dict] = []
        self._open: dict | None = None  # the item still receiving deltas
        self._message_id: str | None = None  # the message whose text the open item shows
        self._text: list[str] = []
        self._arguments: list[str] = []
        self._call: Content | None = None

    @property
    def output_items(self) -> list[dict]:
        return self.items

    def _event(self, event_type: type[BaseModel], **fields: Any) -> dict:
        event = _dump(
            event_type(type=_type_of(event_type), sequence_number=self.sequence, **fields)
        )
        self.sequence += 1
        return event

    def _lifecycle(
        self, event_type: type, status: str, result: HostedRunResult | None = None
    ) -> dict:
        response = response_object(self.run, status=status, output=self.items, result=result)
        response["output"] = [_output_item(item) for item in response["output"]]
        event = self._event(event_type, response=Response.model_validate(response))
        _whole_seconds(event["response"])
        return event

    def start(self) -> list[dict]:
        if self.run.status == Run.Status.QUEUED:
            return [
                self._lifecycle(ResponseCreatedEvent, "queued"),
                self._lifecycle(ResponseQueuedEvent, "queued"),
            ]
        return [
            self._lifecycle(ResponseCreatedEvent, "in_progress"),
            self._lifecycle(ResponseInProgressEvent, "in_progress"),
        ]

    def resume(self) -> list[dict]:
        return [self._lifecycle(ResponseInProgressEvent, "in_progress")]

    def update(self, update: AgentResponseUpdate) -> list[dict]:
        events: list[dict] = []
        for content in update.contents:
            if content.type == "text" and content.text:
                events += self._text_delta(content.text, update.message_id)
            elif content.type == "function_call":
                events += self._call_delta(content)
            elif content.type == "function_result":
                events += self._close()
                events += self._whole_item(_function_output_item(new_item_id("fco"), content))
        return events

    def _index(self) -> int:
        return len(self.items)

    def _text_delta(self, delta: str, message_id: str | None) -> list[dict]:
        """Text continues the open message item, unless it is another message's (each output of
        a workflow is a message of its own)."""
        events: list[dict] = []
        other_message = message_id and self._message_id and message_id != self._message_id
        if self._open is None or self._open["type"] != "message" or other_message:
            events += self._close()
            self._open = _message_item(new_item_id("msg"), "", "in_progress")
            self._message_id = message_id
            events.append(
                self._event(
                    ResponseOutputItemAddedEvent,
                    output_index=self._index(),
                    item=_output_item(self._open),
                )
            )
            events.append(
                self._event(
                    ResponseContentPartAddedEvent,
                    item_id=self._open["id"],
                    output_index=self._index(),
                    content_index=0,
                    part=_text_part(""),
                )
            )
        self._text.append(delta)
        events.append(
            self._event(
                ResponseTextDeltaEvent,
                item_id=self._open["id"],
                output_index=self._index(),
                content_index=0,
                delta=delta,
                logprobs=[],
            )
        )
        return events

    def _call_delta(self, content: Content) -> list[dict]:
        events: list[dict] = []
        same_call = self._call is not None and content.call_id in (None, self._call.call_id)
        if self._open is None or self._open["type"] != "function_call" or not same_call:
            events += self._close()
            self._call = content
            self._open = _function_call_item(new_item_id("fc"), content, "", "in_progress")
            events.append(
                self._event(
                    ResponseOutputItemAddedEvent,
                    output_index=self._index(),
                    item=_output_item(self._open),
                )
            )
        if delta := _arguments(content):
            self._arguments.append(delta)
            events.append(
                self._event(
                    ResponseFunctionCallArgumentsDeltaEvent,
                    item_id=self._open["id"],
                    output_index=self._index(),
                    delta=delta,
                )
            )
        return events

    def _whole_item(self, item: dict) -> list[dict]:
        events = [
            self._event(
                ResponseOutputItemAddedEvent, output_index=self._index(), item=_output_item(item)
            ),
            self._event(
                ResponseOutputItemDoneEvent, output_index=self._index(), item=_output_item(item)
            ),
        ]
        self.items.append(item)
        return events

    def _close(self) -> list[dict]:
        """Finish the open item, if any."""
        item, self._open = self._open, None
        if item is None:
            return []
        index = self._index()
        if item["type"] == "message":
            text = "".join(self._text)
            self._text.clear()
            item = _message_item(item["id"], text, "completed")
            events = [
                self._event(
                    ResponseTextDoneEvent,
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=[],
                ),
                self._event(
                    ResponseContentPartDoneEvent,
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=_text_part(text),
                ),
            ]
        else:
            arguments = "".join(self._arguments)
            self._arguments.clear()
            item = _function_call_item(item["id"], self._call, arguments, "completed")  # type: ignore[arg-type]
            events = [
                self._event(
                    ResponseFunctionCallArgumentsDoneEvent,
                    item_id=item["id"],
                    output_index=index,
                    arguments=arguments,
                    name=item["name"],
                ),
            ]
        events.append(
            self._event(ResponseOutputItemDoneEvent, output_index=index, item=_output_item(item))
        )
        self.items.append(item)
        return events

    def finish(self, result: HostedRunResult) -> list[dict]:
        events = self._close()
        if not self.items and result.status != "failed":
            for item in output_items(result.messages):
                events += self._whole_item(item)
        events.append(self._lifecycle(_TERMINAL_EVENTS[result.status], result.status, result))
        return events


KEEP_ALIVE = ": keep-alive\n\n"
_END = object()


async def sse_stream(
    batches: AsyncGenerator[list[dict], None], *, encode: Callable[[list[dict]], str] | None = None
) -> AsyncIterator[str]:
    """Batches of events as SSE text; a comment first, so headers go out at once under daphne,
    and another whenever AFHOST_SSE_KEEPALIVE seconds pass without an event, so that proxies
    do not cut a stream whose run is quiet.

    The batches are produced by a task of their own, so waiting for the next one can time out
    without interrupting it; if the client goes away, the task is cancelled and the batches
    closed before the response ends (a foreground run is then stored as cancelled). `encode`
    writes a batch (the Responses API's events by default).
    """
    yield ": stream open\n\n"
    handoff: asyncio.Queue = asyncio.Queue(maxsize=1)
    producer = asyncio.create_task(_produce(batches, handoff))
    try:
        while True:
            try:
                async with asyncio.timeout(settings.AFHOST_SSE_KEEPALIVE):
                    item = await handoff.get()
            except TimeoutError:
                yield KEEP_ALIVE
                continue
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            yield (encode or sse)(item)
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


async def _produce(batches: AsyncGenerator[list[dict], None], handoff: asyncio.Queue) -> None:
    async with contextlib.aclosing(batches):
        try:
            async for events in batches:
                await handoff.put(events)
        except Exception as exc:
            await handoff.put(exc)
            return
    await handoff.put(_END)


def sse(events: Iterable[dict]) -> str:
    return "".join(
        f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"
        for event in events
    )
