"""Loading the hosted target named by AFHOST_TARGET, and adapting it to one calling convention.

A target is either
- an agent-framework agent: anything implementing `agent_framework.SupportsAgentRun`
  (e.g. `agent_framework.Agent`), called with the whole conversation each turn; or
- an agent-framework `Workflow`, or (recommended) a function without arguments that builds a
  fresh one: each run is a turn of the workflow (afhost.workflows); or
- a plain async callable `async def answer(messages: list[agent_framework.Message]) -> str`,
  or an async generator function with the same argument that yields `str` chunks (streamed).
  `messages` holds the conversation so far, oldest first, ending with the new input; request
  instructions, when given, come first as a "system" message; or
- a built-in model target, named instead of a module attribute: openai, azure-openai or
  openai-compatible (afhost.model_presets).
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from agent_framework import (
    AgentResponse,
    AgentResponseUpdate,
    Content,
    Message,
    ResponseStream,
    SupportsAgentRun,
    Workflow,
)
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from afhost.workflows import WorkflowTarget

Answer = Callable[[list[Message]], Awaitable[str] | AsyncIterator[str]]


class TargetLoadError(ImproperlyConfigured):
    pass


class CallableAgent:
    """Adapts a plain async callable to the `SupportsAgentRun` shape the host drives."""

    def __init__(self, answer: Answer, *, name: str) -> None:
        self.answer = answer
        self.id = self.name = name
        self.description = answer.__doc__ or ""
        self._streams = inspect.isasyncgenfunction(answer) or inspect.isasyncgenfunction(
            getattr(answer, "__call__", None)  # noqa: B004 (an instance with an async generator __call__)
        )

    def run(
        self,
        messages: Sequence[Message],
        *,
        stream: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> Awaitable[AgentResponse] | ResponseStream[AgentResponseUpdate, AgentResponse]:
        conversation = list(messages)
        if options and options.get("instructions"):
            conversation.insert(0, Message("system", [options["instructions"]]))
        if stream:
            return ResponseStream(self._updates(conversation), finalizer=AgentResponse.from_updates)
        return self._complete(conversation)

    async def _chunks(self, messages: list[Message]) -> AsyncIterator[str]:
        if self._streams:
            async for chunk in self.answer(messages):  # type: ignore[union-attr]
                yield _checked_text(chunk)
        else:
            yield _checked_text(await self.answer(messages))  # type: ignore[misc]

    async def _updates(self, messages: list[Message]) -> AsyncIterator[AgentResponseUpdate]:
        async for chunk in self._chunks(messages):
            if chunk:
                yield AgentResponseUpdate(role="assistant", contents=[Content.from_text(chunk)])

    async def _complete(self, messages: list[Message]) -> AgentResponse:
        text = "".join([chunk async for chunk in self._chunks(messages)])
        return AgentResponse(messages=[Message("assistant", [text])], finish_reason="stop")


def _checked_text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"an afhost callable target must produce str, got {type(value).__name__}")
    return value


class TextAppends:
    """Keeps a target's streamed text as appends, which is how channels stream it.

    A text content with `merge_mode="replace"` stands for the whole text of its run of text
    contents (agent-framework-openai sends one as each Responses API text part is done, after its
    deltas): it becomes what it adds to the text streamed so far, usually nothing. Text that was
    streamed cannot be taken back, so a replacement that does not continue it is left out of the
    stream (the final response, which agent_framework merges itself, still has it).
    """

    def __init__(self) -> None:
        self._text = ""

    def __call__(self, update: AgentResponseUpdate) -> AgentResponseUpdate:
        contents: list[Content] = []
        changed = False
        for content in update.contents:
            if content.type == "text" and content.merge_mode == "replace":
                changed = True
                whole = content.text or ""
                if whole.startswith(self._text):
                    if rest := whole[len(self._text) :]:
                        contents.append(Content.from_text(rest))
                    self._text = whole
                continue
            if content.type == "text":
                self._text += content.text or ""
            elif content.type != "usage":
                self._text = ""
            contents.append(content)
        if not changed:
            return update
        appended = copy.copy(update)
        appended.contents = contents
        return appended


# Built-in model targets (afhost.model_presets), named by AFHOST_TARGET instead of an attribute.
MODEL_PRESETS = ("openai", "azure-openai", "openai-compatible")


def load_target(path: str) -> SupportsAgentRun:
    """Import `module:attribute` (or build a model preset) and return it as something the host
    can run."""
    if path in MODEL_PRESETS:
        from afhost.model_presets import load_model_target

        return load_model_target(path)  # type: ignore[return-value]
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise TargetLoadError(
            f"AFHOST_TARGET must look like 'package.module:attribute' or name a model "
            f"({', '.join(MODEL_PRESETS)}), got {path!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise TargetLoadError(
            f"AFHOST_TARGET={path!r}: cannot import {module_name!r}: {exc!r}"
        ) from exc
    try:
        target = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise TargetLoadError(
            f"AFHOST_TARGET={path!r}: {module_name!r} has no {attribute!r}"
        ) from None
    if isinstance(target, SupportsAgentRun):
        return target
    call = getattr(target, "__call__", None)  # noqa: B004
    if callable(target) and (
        inspect.iscoroutinefunction(target)
        or inspect.isasyncgenfunction(target)
        or inspect.iscoroutinefunction(call)
        or inspect.isasyncgenfunction(call)
    ):
        return CallableAgent(target, name=attribute)
    if isinstance(target, Workflow) or _takes_no_arguments(target):
        try:
            return WorkflowTarget.load(target, name=attribute)
        except TypeError as exc:
            raise TargetLoadError(f"AFHOST_TARGET={path!r}: {exc}") from exc
    raise TargetLoadError(
        f"AFHOST_TARGET={path!r} is a {type(target).__name__}: expected an agent_framework agent "
        "or an async callable taking a list of messages, or a Workflow (or a function that "
        "builds one)"
    )


def _takes_no_arguments(target: object) -> bool:
    """Whether the target is a function that can be called without arguments (a workflow
    factory is one; a class is not)."""
    if not callable(target) or inspect.isclass(target):
        return False
    try:
        inspect.signature(target).bind()
    except (TypeError, ValueError):
        return False
    return True


@functools.cache
def get_target() -> SupportsAgentRun:
    return load_target(settings.AFHOST_TARGET)


def hosts_workflow() -> bool:
    """Whether the hosted target is a workflow (whose channels answer with its frames)."""
    return isinstance(get_target(), WorkflowTarget)
