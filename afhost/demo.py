"""The built-in demo agent: a real agent_framework agent over a small offline chat client.

It needs no model or network, answers deterministically, streams word by word, and shows that
it remembers the conversation by quoting what the user said before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from agent_framework import (
    BaseChatClient,
    ChatResponse,
    ChatResponseUpdate,
    Content,
    Message,
    RawAgent,
    UsageDetails,
)
from django.conf import settings


def demo_reply(messages: Sequence[Message]) -> str:
    """The demo's answer to a conversation: quote the last user turn and the one before it."""
    user_turns = [m for m in messages if m.role == "user"]
    if not user_turns:
        return "Hello! Say something and I will remember it."
    last = user_turns[-1]
    parts = [f'You said: "{last.text}".' if last.text else "You sent me no text."]
    for content in last.contents:
        if content.type in ("data", "uri") and content.media_type:
            kind = "an image" if content.media_type.startswith("image/") else "a file"
            parts.append(f"You attached {kind} ({content.media_type}).")
    if len(user_turns) > 1:
        parts.append(f'Before that you said: "{user_turns[-2].text}".')
    else:
        parts.append("That is the first thing you told me.")
    parts.append(f"We have exchanged {len(user_turns)} message(s) so far.")
    return " ".join(parts)


class DemoChatClient(BaseChatClient):
    """An offline chat client whose replies come from `demo_reply`.

    The demo has no tools, so it leaves out agent_framework's function-invocation, middleware
    and telemetry layers (a chat client for a real model composes them; they would double the
    demo's cost per answer).
    """

    def _inner_get_response(
        self,
        *,
        messages: Sequence[Message],
        stream: bool,
        options: Mapping[str, Any],
        **kwargs: Any,
    ):
        text = demo_reply(messages)
        usage: UsageDetails = {
            "input_token_count": sum(len(m.text.split()) for m in messages),
            "output_token_count": len(text.split()),
        }
        if stream:
            return self._build_response_stream(self._stream(text, usage))
        return self._complete(text, usage)

    async def _complete(self, text: str, usage: UsageDetails) -> ChatResponse:
        return ChatResponse(
            messages=[Message("assistant", [text])], finish_reason="stop", usage_details=usage
        )

    async def _stream(self, text: str, usage: UsageDetails) -> AsyncIterator[ChatResponseUpdate]:
        delay = settings.AFHOST_DEMO_TOKEN_DELAY
        words = text.split(" ")
        for index, word in enumerate(words):
            if delay:
                await asyncio.sleep(delay)
            chunk = word if index == len(words) - 1 else word + " "
            yield ChatResponseUpdate(role="assistant", contents=[Content.from_text(chunk)])
        yield ChatResponseUpdate(
            role="assistant", contents=[Content.from_usage(usage)], finish_reason="stop"
        )


class _WithoutFunctionInvokingWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "does not support function invoking" not in record.getMessage()


def _tool_less_agent(client: BaseChatClient, **kwargs: Any) -> RawAgent:
    """An agent over a client without tools, minus the warning that it cannot invoke them.

    A RawAgent: an Agent without its middleware and telemetry layers, which the demo does not
    use either (with them, running it costs over twice as much CPU: ~70 against ~30 µs an
    answer). A target of your own is hosted as it is, layers and all.
    """
    agent_framework_logger = logging.getLogger("agent_framework")
    quiet = _WithoutFunctionInvokingWarning()
    agent_framework_logger.addFilter(quiet)
    try:
        return RawAgent(client, **kwargs)
    finally:
        agent_framework_logger.removeFilter(quiet)


agent = _tool_less_agent(
    DemoChatClient(),
    name="afhost-demo",
    description="Offline demo agent that echoes and remembers what you said.",
)
