"""Targets the test suite hosts: the demo agent with a few scripted behaviours, and plain callables."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Never

from agent_framework import (
    Agent,
    ChatMiddlewareLayer,
    ChatResponse,
    ChatResponseUpdate,
    Content,
    FunctionInvocationLayer,
    Message,
    WorkflowBuilder,
    WorkflowContext,
    executor,
    tool,
)
from agent_framework.observability import ChatTelemetryLayer

from afhost.demo import DemoChatClient


class ScriptedChatClient(
    FunctionInvocationLayer, ChatMiddlewareLayer, ChatTelemetryLayer, DemoChatClient
):
    """The demo client, except that the last user text can script it:

    - "fail": raise before answering;
    - "fail midway": stream two words, then raise;
    - "sleep 2.5": wait that many seconds (between streamed words, or before answering);
    - "call tool": answer with a function call, its result and a text.
    """

    def _inner_get_response(
        self,
        *,
        messages: Sequence[Message],
        stream: bool,
        options: Mapping[str, Any],
        **kwargs: Any,
    ):
        command = next((m.text for m in reversed(messages) if m.role == "user"), "")
        if command == "fail":
            raise RuntimeError("scripted failure")
        if command == "fail midway" and stream:
            return self._build_response_stream(self._fail_midway())
        if command == "call tool":
            return self._tool_turn(messages, stream)
        if command.startswith("sleep "):
            seconds = float(command.split()[1])
            if stream:
                return self._build_response_stream(self._slow_stream(seconds))
            return self._slow(seconds)
        return super()._inner_get_response(
            messages=messages, stream=stream, options=options, **kwargs
        )

    def _tool_turn(self, messages: Sequence[Message], stream: bool):
        results = [c for m in messages for c in m.contents if c.type == "function_result"]
        if results:
            contents = [Content.from_text(f"The weather tool says: {results[-1].result}")]
        else:
            contents = [
                Content.from_function_call("call_1", "get_weather", arguments='{"city": "Oslo"}')
            ]
        if not stream:
            return self._respond(contents)

        async def updates() -> AsyncIterator[ChatResponseUpdate]:
            yield ChatResponseUpdate(role="assistant", contents=contents, finish_reason="stop")

        return self._build_response_stream(updates())

    async def _respond(self, contents: list[Content]) -> ChatResponse:
        return ChatResponse(messages=[Message("assistant", contents)], finish_reason="stop")

    async def _fail_midway(self) -> AsyncIterator[ChatResponseUpdate]:
        yield ChatResponseUpdate(role="assistant", contents=[Content.from_text("partial ")])
        yield ChatResponseUpdate(role="assistant", contents=[Content.from_text("answer ")])
        raise RuntimeError("scripted failure midway")

    async def _slow(self, seconds: float) -> ChatResponse:
        await asyncio.sleep(seconds)
        return ChatResponse(
            messages=[Message("assistant", ["done sleeping"])], finish_reason="stop"
        )

    async def _slow_stream(self, seconds: float) -> AsyncIterator[ChatResponseUpdate]:
        for word in ("done ", "sleeping"):
            await asyncio.sleep(seconds / 2)
            yield ChatResponseUpdate(role="assistant", contents=[Content.from_text(word)])


@tool
def get_weather(city: str) -> str:
    """Report the weather in a city."""
    return f"sunny in {city}"


agent = Agent(ScriptedChatClient(), name="scripted", tools=[get_weather])


async def shout(messages: list[Message]) -> str:
    """A plain async callable target."""
    return messages[-1].text.upper()


async def spell(messages: list[Message]) -> AsyncIterator[str]:
    """A plain async generator target: streams the last message letter by letter."""
    for letter in messages[-1].text:
        yield letter


async def count_turns(messages: list[Message]) -> str:
    roles = [m.role for m in messages]
    return f"{roles.count('user')} user, {roles.count('assistant')} assistant, {roles.count('system')} system"


not_callable = 42


@executor(id="upper")
async def upper(messages: list[Message], ctx: WorkflowContext[Never, str]) -> None:
    await ctx.yield_output(messages[-1].text.upper())


workflow = WorkflowBuilder(start_executor=upper).build()
