"""The Invocations request: `{"message", "stream", "options"}` as Microsoft's Agent Framework
host for Invocations (agent-framework-foundry-hosting) reads it, with the same error messages,
plus afhost's `background` (a long-running invocation) and `response_target`."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from afhost.db import storable
from afhost.types import NONE, ResponseTarget
from channels_app.exceptions import ApiError
from channels_app.responses.schemas import parse_response_target

# Ids callers may choose (x-agent-invocation-id, agent_session_id): Microsoft's host's rule.
_ID = re.compile(r"[a-zA-Z0-9\-_.:]{1,256}")

# Options that are the agent's to set, and options the host sets itself: Microsoft's host
# refuses both, with these messages.
AGENT_CONTROLLED = frozenset(
    {
        "additional_function_arguments",
        "client_kwargs",
        "compaction_strategy",
        "function_invocation_kwargs",
        "instructions",
        "middleware",
        "session",
        "tokenizer",
        "tools",
    }
)
HOST_CONTROLLED = frozenset(
    {
        "agent",
        "agent_reference",
        "agent_session_id",
        "background",
        "call_id",
        "continuation_token",
        "conversation",
        "conversation_id",
        "extra_body",
        "input",
        "previous_response_id",
        "response_id",
        "service_session_id",
        "session_id",
        "store",
        "stream",
        "user",
        "user_id",
    }
)


class InvalidInvocation(Exception):
    """A request Microsoft's host answers with `{"error": "<message>"}` and `status`."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


@dataclass(frozen=True, slots=True)
class InvocationBody:
    message: str
    stream: bool = False
    background: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    response_target: ResponseTarget = ResponseTarget()


def valid_id(value: str | None) -> str | None:
    return value if value is not None and _ID.fullmatch(value) else None


def issued_id(value: str | None) -> str:
    """A caller's id if it is valid, else a new one, as Microsoft's host answers either."""
    return valid_id(value) or str(uuid.uuid4())


def session_for(value: str | None) -> str:
    """The session an invocation names (`?agent_session_id=`), else the container's (Foundry's
    FOUNDRY_AGENT_SESSION_ID), else a new one."""
    return issued_id(value or settings.FOUNDRY_AGENT_SESSION_ID or None)


def parse_invocation(raw: bytes) -> InvocationBody:
    try:
        body = json.loads(raw)
    except ValueError as exc:  # also a body that is not UTF-8
        raise InvalidInvocation(str(exc)) from None
    if not isinstance(body, dict):
        raise InvalidInvocation("The invocation must be a JSON object.")
    message, stream = body.get("message"), body.get("stream", False)
    options, background = body.get("options", {}), body.get("background", False)
    if not isinstance(message, str):
        raise InvalidInvocation("message must be a string.")
    if not isinstance(stream, bool):
        raise InvalidInvocation("stream must be a boolean.")
    if not isinstance(options, dict):
        raise InvalidInvocation("options must be an object.")
    if not isinstance(background, bool):
        raise InvalidInvocation("background must be a boolean.")
    if reserved := HOST_CONTROLLED.intersection(options):
        raise InvalidInvocation(
            f"prepare_options cannot set host-controlled fields: {', '.join(sorted(reserved))}."
        )
    if reserved := AGENT_CONTROLLED.intersection(options):
        raise InvalidInvocation(
            "Invocations options cannot set agent-controlled fields: "
            f"{', '.join(sorted(reserved))}."
        )
    if not storable(body):
        raise InvalidInvocation("The invocation holds characters that cannot be stored (NUL).")
    try:
        target = parse_response_target(body.get("response_target"))
    except ApiError as exc:
        raise InvalidInvocation(exc.message) from None
    if target.pushes or NONE in target.targets:  # the answer goes elsewhere: run in a worker
        background = True
    if background and stream:
        raise InvalidInvocation("A long-running invocation cannot be streamed; poll it instead.")
    return InvocationBody(
        message=message,
        stream=stream,
        background=background,
        options=options,
        response_target=target,
    )
