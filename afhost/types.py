"""Typed envelopes that cross the boundary between the wire protocols and the host core."""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent_framework import AgentResponse, Message


def new_item_id(prefix: str) -> str:
    # Item ids name parts of a response; they grant nothing, so they need no secure randomness
    # (and each os.urandom call is a system call on the hot path).
    return f"{prefix}_{random.getrandbits(192):048x}"


@dataclass(frozen=True, slots=True)
class ChannelIdentity:
    """Who is talking, as the channel knows them: Telegram user 42, an API caller, ..."""

    channel: str
    native_id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def isolation_key(self) -> str:
        return f"{self.channel}:{self.native_id}"


# Targets that name no destination of their own.
ORIGINATING, ACTIVE, ALL_LINKED, NONE = "originating", "active", "all_linked", "none"
KEYWORD_TARGETS = (ORIGINATING, ACTIVE, ALL_LINKED, NONE)


@dataclass(frozen=True, slots=True)
class ResponseTarget:
    """Where a run's answer goes: back to the caller ("originating", the default), and/or pushed
    to other destinations: "active" (the channel the person used last), "all_linked" (every
    identity linked to the caller), a channel name (the caller's identities there), or
    "<channel>:<locator>" (one chat; trusted callers only). "none": the caller polls.

    `echo_input` pushes the caller's input first, marked as theirs, to each other destination.
    """

    targets: tuple[str, ...] = (ORIGINATING,)
    echo_input: bool = False

    @property
    def pushes(self) -> bool:
        return any(target not in (ORIGINATING, NONE) for target in self.targets)

    @property
    def is_default(self) -> bool:
        return self.targets == (ORIGINATING,) and not self.echo_input

    @property
    def explicit(self) -> list[str]:
        """The targets that name a destination themselves ("telegram:42")."""
        return [target for target in self.targets if ":" in target]

    def as_dict(self) -> dict[str, Any]:
        return {"targets": list(self.targets), "echo_input": self.echo_input}


@dataclass(frozen=True, slots=True)
class ChannelRequest:
    """A request to run the hosted target, parsed from any channel's wire format."""

    channel: str
    identity: ChannelIdentity
    input: list[Message]
    stream: bool = False
    background: bool = False
    store: bool = True
    model: str = ""
    instructions: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # Channel-private facts the core stores but never reads (e.g. the Responses `user` field).
    attributes: Mapping[str, Any] = field(default_factory=dict)
    # Continue after this run (public id), or in this named conversation; at most one of them.
    previous_run_id: uuid.UUID | None = None
    conversation_key: str | None = None
    # Whose data the run and its conversation belong to; the identity's own key unless a channel
    # shares a conversation between people (e.g. a whole group chat).
    partition_key: str = ""
    # A history over AFHOST_MAX_HISTORY_BYTES: "auto" leaves its oldest turns out, "disabled"
    # fails the turn (afhost.exceptions.HistoryTooLong).
    truncation: str = "auto"
    # Claims the channel verified itself (an Entra access token's), or None.
    verified_claims: Mapping[str, Any] | None = None
    response_target: ResponseTarget = ResponseTarget()
    # The id an Invocations caller names the run by.
    invocation_id: str = ""

    @property
    def isolation_key(self) -> str:
        return self.partition_key or self.identity.isolation_key

    @property
    def continues_conversation(self) -> bool:
        return self.previous_run_id is not None or self.conversation_key is not None


# Finish reasons that mean the answer was cut short.
_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass(frozen=True, slots=True)
class HostedRunResult:
    """What a finished run produced, in channel-neutral terms."""

    status: str
    messages: list[Message]
    finish_reason: str = ""
    usage: Mapping[str, int] | None = None
    # `error` is shown to the client; `error_detail` only to operators.
    error: Mapping[str, str] | None = None
    error_detail: str = ""
    # A workflow run's output and request_info events as Microsoft's Invocations host frames
    # them ({"type": "output", "data", "executor_id"} or {"type": "request_info", "data",
    # "request_id", "source_executor_id"}); None for an agent's run.
    workflow_outputs: list[dict] | None = None

    @classmethod
    def from_response(cls, response: AgentResponse) -> HostedRunResult:
        reason = str(response.finish_reason or "")
        usage = response.usage_details or {}
        return cls(
            status="incomplete" if reason in _INCOMPLETE_REASONS else "completed",
            messages=list(response.messages),
            finish_reason=_INCOMPLETE_REASONS.get(reason, reason),
            usage={
                "input_tokens": usage.get("input_token_count") or 0,
                "output_tokens": usage.get("output_token_count") or 0,
                "total_tokens": usage.get("total_token_count")
                or (usage.get("input_token_count") or 0) + (usage.get("output_token_count") or 0),
            }
            if usage
            else None,
            workflow_outputs=(response.additional_properties or {}).get("workflow_outputs"),
        )

    @classmethod
    def failure(cls, message: str, *, detail: str, code: str = "server_error") -> HostedRunResult:
        return cls(
            status="failed",
            messages=[],
            error={"code": code, "message": message},
            error_detail=detail,
        )

    @property
    def text(self) -> str:
        return "\n".join(m.text for m in self.messages if m.role == "assistant" and m.text)
