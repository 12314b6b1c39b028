"""The Responses API request body, validated by hand so errors name the exact parameter."""

from __future__ import annotations

import base64
import json
import re
import typing
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent_framework import Content, Message
from django.conf import settings
from openai.types.responses.response_create_params import ResponseCreateParamsBase

from afhost.db import storable
from afhost.models import RESPONSE_ID_PREFIX, Run
from afhost.registry import pushing_channels
from afhost.types import KEYWORD_TARGETS, NONE, ResponseTarget
from channels_app.exceptions import ApiError

_RESPONSE_ID = re.compile(RESPONSE_ID_PREFIX + r"([0-9a-f]{32})")
_CONVERSATION_ID = re.compile(r"[A-Za-z0-9._:\-]{1,200}")
MAX_MODEL_LENGTH: int = Run._meta.get_field("model").max_length  # type: ignore[assignment]

# Everything OpenAI's create accepts, and our extensions; what we honour or may safely ignore.
EXTENSION_PARAMS = frozenset({"response_target"})
OPENAI_PARAMS = frozenset(ResponseCreateParamsBase.__annotations__) | {"stream"} | EXTENSION_PARAMS
SUPPORTED_PARAMS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "previous_response_id",
        "conversation",
        "store",
        "stream",
        "background",
        "metadata",
        "user",
        "safety_identifier",
        "temperature",
        "top_p",
        "max_output_tokens",
        "parallel_tool_calls",
        "tool_choice",
        "tools",
        "stream_options",
        "include",
        "truncation",
        "service_tier",
        "prompt_cache_key",
        "text",
        "reasoning",
        "response_target",
    }
)
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def _literals(hint: Any) -> tuple[str, ...]:
    """The values of the Literal types in a type hint, through Optional, List and aliases."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    return tuple(value for arg in typing.get_args(hint) for value in _literals(arg))


# Parameters we accept and ignore still take only the values OpenAI's SDK allows.
_OPENAI_TYPES = typing.get_type_hints(ResponseCreateParamsBase)
TRUNCATIONS = _literals(_OPENAI_TYPES["truncation"])
SERVICE_TIERS = _literals(_OPENAI_TYPES["service_tier"])
INCLUDABLES = _literals(_OPENAI_TYPES["include"])


def parse_response_id(value: str) -> uuid.UUID | None:
    match = _RESPONSE_ID.fullmatch(value)
    return uuid.UUID(match[1]) if match else None


@dataclass(frozen=True, slots=True)
class CreateResponse:
    input: list[Message]
    model: str = ""
    instructions: str = ""
    previous_response_id: str | None = None
    conversation: str | None = None
    store: bool = True
    stream: bool = False
    background: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    safety_identifier: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # OpenAI's default: a history over the budget fails the create rather than losing turns.
    truncation: str = Run.Truncation.DISABLED
    response_target: ResponseTarget = ResponseTarget()


def _invalid(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"Invalid value for '{param}': {message}", param=param, code=code)


def _type_error(param: str, expected: str, value: Any) -> ApiError:
    got = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)
    return ApiError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
        param=param,
        code="invalid_type",
    )


def _optional(
    body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], expected: str
) -> Any:
    value = body.get(name)
    if value is None:
        return None
    # bool is an int subclass; a number parameter must not take true/false.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _type_error(name, expected, value)
    if not isinstance(value, kind):
        raise _type_error(name, expected, value)
    return value


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = _optional(body, name, (int, float), "a number")
    if value is not None and not low <= value <= high:
        raise _invalid(name, f"expected a number between {low} and {high}, got {value}.")
    return value


def _one_of(value: str, choices: tuple[str, ...], param: str) -> str:
    if value not in choices:
        expected = ", ".join(f"'{choice}'" for choice in choices)
        raise _invalid(param, f"expected one of {expected}, got '{value}'.")
    return value


def _choice(body: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str | None:
    value = _optional(body, name, str, "a string")
    return None if value is None else _one_of(value, choices, name)


def _include(body: Mapping[str, Any]) -> list[str]:
    include = _optional(body, "include", list, "an array") or []
    for index, item in enumerate(include):
        if not isinstance(item, str):
            raise _type_error(f"include[{index}]", "a string", item)
        _one_of(item, INCLUDABLES, f"include[{index}]")
    return include


# Parsing JSON holds the GIL for the whole body, even off the event loop: a body of a few MB made
# of tiny values (300,000 items: ~150 ms) would stall every other request. Far more values than
# any allowed request has are refused from a count of the raw bytes (~1 ms for 10 MB), which
# bounds a parse to some 10 ms. Commas in text count too: 262,144 is ~15 MB of prose.
MAX_JSON_CONTAINERS_PER_ITEM = 8
MAX_JSON_COMMAS = 262_144


def _too_many_values(raw: bytes) -> bool:
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > MAX_JSON_CONTAINERS_PER_ITEM * settings.AFHOST_MAX_INPUT_ITEMS:
        return True
    return raw.count(b",") > MAX_JSON_COMMAS


def parse_body(raw: bytes) -> dict[str, Any]:
    if _too_many_values(raw):
        raise ApiError(
            400,
            "Invalid 'input': too many items. Expected at most "
            f"{settings.AFHOST_MAX_INPUT_ITEMS} input items and content parts together.",
            param="input",
            code="array_above_max_length",
        )
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ApiError(
            400,
            f"We could not parse the JSON body of your request ({reason}). "
            "The body must be a JSON object.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    # JSON can escape characters no database stores (PostgreSQL refuses NUL in text and JSON,
    # and UTF-8 has no lone surrogates). Only bodies that escape them need the close look.
    if (b"\\u0000" in raw or b"\\ud" in raw or b"\\uD" in raw) and not storable(body):
        raise ApiError(
            400,
            "The request contains a NUL character or an unpaired surrogate (\\u0000, "
            "\\ud800-\\udfff), which cannot be stored.",
            code="invalid_value",
        )
    return body


def parse_create(body: Mapping[str, Any]) -> CreateResponse:
    for name in body:
        if name not in OPENAI_PARAMS:
            raise ApiError(
                400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
            )
        if name not in SUPPORTED_PARAMS and body[name] is not None:
            raise ApiError(
                400,
                f"Unsupported parameter: '{name}' is not supported by this agent host.",
                param=name,
                code="unsupported_parameter",
            )

    if body.get("input") is None:
        raise ApiError(
            400,
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    store = _optional(body, "store", bool, "a boolean")
    background = bool(_optional(body, "background", bool, "a boolean"))
    if background and store is False:
        raise ApiError(
            400,
            "background=true requires store=true.",
            param="background",
            code="unsupported_parameter",
        )
    previous = _optional(body, "previous_response_id", str, "a string")
    conversation = _conversation(body.get("conversation"))
    if previous is not None and conversation is not None:
        raise ApiError(
            400,
            "Mutually exclusive parameters: Ensure you are only providing one of: "
            "'previous_response_id' or 'conversation'.",
            param="conversation",
            code="mutually_exclusive_parameters",
        )
    _check_tools(body)
    max_output_tokens = _optional(body, "max_output_tokens", int, "an integer")
    if max_output_tokens is not None and max_output_tokens < 1:
        raise _invalid(
            "max_output_tokens", f"expected a positive integer, got {max_output_tokens}."
        )
    options = {
        "temperature": _number(body, "temperature", 0, 2),
        "top_p": _number(body, "top_p", 0, 1),
        "max_tokens": max_output_tokens,
    }
    for name in ("stream_options", "text", "reasoning"):
        _optional(body, name, dict, "an object")
    _include(body)
    truncation = _choice(body, "truncation", TRUNCATIONS) or Run.Truncation.DISABLED
    _choice(body, "service_tier", SERVICE_TIERS)
    _optional(body, "prompt_cache_key", str, "a string")
    target = parse_response_target(body.get("response_target"))
    if target.pushes or NONE in target.targets:  # the answer goes elsewhere: run in a worker
        if store is False:
            raise _invalid("response_target", "pushing an answer elsewhere needs store=true.")
        background = True
    model = _optional(body, "model", str, "a string") or ""
    if len(model) > MAX_MODEL_LENGTH:
        raise _invalid("model", f"expected at most {MAX_MODEL_LENGTH} characters.")
    return CreateResponse(
        input=parse_input(body["input"]),
        model=model,
        instructions=_optional(body, "instructions", str, "a string") or "",
        previous_response_id=previous,
        conversation=conversation,
        store=store is not False,
        stream=bool(_optional(body, "stream", bool, "a boolean")),
        background=background,
        metadata=_metadata(body.get("metadata")),
        user=_optional(body, "user", str, "a string"),
        safety_identifier=_optional(body, "safety_identifier", str, "a string"),
        options={key: value for key, value in options.items() if value is not None},
        truncation=truncation,
        response_target=target,
    )


_TARGET_KINDS = (*KEYWORD_TARGETS, "channel", "channels", "identities")
_TARGET_SHAPES = (
    'a target ("originating", "active", "all_linked", "none", a channel such as "telegram", '
    'or "telegram:<chat_id>"), a list of them, or {"kind": ..., "targets": [...], '
    '"echo_input": true}'
)


def parse_response_target(value: Any) -> ResponseTarget:
    """afhost's `response_target` extension: where the answer goes besides the caller."""
    if value is None:
        return ResponseTarget()
    echo_input = False
    if isinstance(value, dict):
        unknown = set(value) - {"kind", "targets", "echo_input"}
        if unknown:
            raise _invalid("response_target", f"unknown field {sorted(unknown)[0]!r}.")
        kind, targets = value.get("kind", "channels"), value.get("targets")
        echo_input = value.get("echo_input", False)
        if kind not in _TARGET_KINDS:
            raise _invalid("response_target", f"unknown kind {kind!r}; use one of {_TARGET_KINDS}.")
        if not isinstance(echo_input, bool):
            raise _type_error("response_target.echo_input", "a boolean", echo_input)
        if kind in KEYWORD_TARGETS:
            if targets:
                raise _invalid("response_target", f"kind {kind!r} takes no targets.")
            value = [kind]
        else:
            value = targets
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > 16:
        raise _invalid("response_target", f"expected {_TARGET_SHAPES}.")
    return ResponseTarget(tuple(_target(item) for item in value), echo_input=echo_input)


def _target(item: Any) -> str:
    if not isinstance(item, str):
        raise _invalid("response_target", f"expected {_TARGET_SHAPES}.")
    if item in KEYWORD_TARGETS:
        return item
    channels = pushing_channels()
    name, colon, locator = item.partition(":")
    if name not in channels:
        known = ", ".join(sorted(channels)) or "none"
        raise _invalid(
            "response_target", f"{item!r} names no channel that can receive pushes ({known})."
        )
    if colon:
        try:
            channels[name].push_locator(locator)
        except ValueError as exc:
            raise _invalid("response_target", f"{item!r}: {exc}.") from None
    return item


def _conversation(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        if set(value) - {"id"}:
            name = next(iter(set(value) - {"id"}))
            raise ApiError(
                400,
                f"Unknown parameter: 'conversation.{name}'.",
                param=f"conversation.{name}",
                code="unknown_parameter",
            )
        value = value.get("id")
        if not isinstance(value, str):
            raise _type_error("conversation.id", "a string", value)
    elif not isinstance(value, str):
        raise _type_error("conversation", "a string or an object", value)
    if not _CONVERSATION_ID.fullmatch(value):
        raise _invalid("conversation", "use 1 to 200 letters, digits or . _ : -")
    return value


def _check_tools(body: Mapping[str, Any]) -> None:
    tools = _optional(body, "tools", list, "an array")
    if tools:
        raise ApiError(
            400,
            "Unsupported parameter: 'tools'. The hosted agent defines its own tools.",
            param="tools",
            code="unsupported_parameter",
        )
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and tool_choice not in ("auto", "none"):
        raise _invalid("tool_choice", "only 'auto' and 'none' are supported.")
    _optional(body, "parallel_tool_calls", bool, "a boolean")


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _type_error("metadata", "an object", value)
    if len(value) > 16:
        raise _invalid("metadata", "at most 16 keys are allowed.")
    for key, item in value.items():
        if len(key) > 64:
            raise _invalid(f"metadata.{key[:64]}", "keys are at most 64 characters.")
        if not isinstance(item, str):
            raise _type_error(f"metadata.{key}", "a string", item)
        if len(item) > 512:
            raise _invalid(f"metadata.{key}", "values are at most 512 characters.")
    return dict(value)


def parse_input(value: Any) -> list[Message]:
    if isinstance(value, str):
        return [Message("user", [value])]
    if not isinstance(value, list):
        raise _type_error("input", "a string or an array", value)
    if not value:
        raise _invalid("input", "expected at least one item.", code="empty_array")
    # What a request costs to parse, store and hand the target grows with its items and their
    # content parts: both count against one limit, checked before any of them is built.
    limit = settings.AFHOST_MAX_INPUT_ITEMS
    count = len(value)
    for item in value:
        if count > limit:
            break
        if isinstance(item, dict) and isinstance(content := item.get("content"), list):
            count += len(content)
    if count > limit:
        raise ApiError(
            400,
            f"Invalid 'input': too many items. Expected at most {limit} input items and "
            "content parts together.",
            param="input",
            code="array_above_max_length",
        )
    return [_input_item(item, f"input[{index}]") for index, item in enumerate(value)]


def _require_str(item: Mapping[str, Any], name: str, path: str) -> str:
    value = item.get(name)
    if value is None:
        raise ApiError(
            400,
            f"Missing required parameter: '{path}.{name}'.",
            param=f"{path}.{name}",
            code="missing_required_parameter",
        )
    if not isinstance(value, str):
        raise _type_error(f"{path}.{name}", "a string", value)
    return value


def _input_item(item: Any, path: str) -> Message:
    if not isinstance(item, dict):
        raise _type_error(path, "an object", item)
    kind = item.get("type", "message")
    if kind == "message":
        role = _require_str(item, "role", path)
        if role not in _ROLES:
            raise _invalid(
                f"{path}.role",
                f"expected one of 'user', 'assistant', 'system', 'developer', got '{role}'.",
            )
        content = item.get("content")
        if isinstance(content, str):
            return Message(_ROLES[role], [content])
        if not isinstance(content, list):
            raise _type_error(f"{path}.content", "a string or an array", content)
        parts = [
            _content_part(part, f"{path}.content[{index}]") for index, part in enumerate(content)
        ]
        return Message(_ROLES[role], parts)
    if kind == "function_call_output":
        call_id = _require_str(item, "call_id", path)
        return Message(
            "tool",
            [Content.from_function_result(call_id, result=_require_str(item, "output", path))],
        )
    if kind == "function_call":
        call_id, name = _require_str(item, "call_id", path), _require_str(item, "name", path)
        arguments = _require_str(item, "arguments", path)
        return Message(
            "assistant", [Content.from_function_call(call_id, name, arguments=arguments)]
        )
    raise _invalid(f"{path}.type", f"input items of type '{kind}' are not supported.")


def _content_part(part: Any, path: str) -> Content:
    if not isinstance(part, dict):
        raise _type_error(path, "an object", part)
    kind = _require_str(part, "type", path)
    if kind in ("input_text", "output_text"):
        return Content.from_text(_require_str(part, "text", path))
    if kind == "refusal":
        return Content.from_text(_require_str(part, "refusal", path))
    if kind == "input_image":
        if part.get("file_id") is not None:
            raise _invalid(
                f"{path}.file_id", "file ids are not supported; send image_url (a URL or data URL)."
            )
        url = _require_str(part, "image_url", path)
        return _uri_content(url, f"{path}.image_url", default_media_type="image/*")
    if kind == "input_file":
        if part.get("file_id") is not None:
            raise _invalid(
                f"{path}.file_id", "file ids are not supported; send file_data or file_url."
            )
        if part.get("file_data") is not None:
            data = _require_str(part, "file_data", path)
            name = part.get("filename") if isinstance(part.get("filename"), str) else None
            if data.startswith("data:"):
                return _uri_content(
                    data, f"{path}.file_data", default_media_type="application/octet-stream"
                )
            try:
                raw = base64.b64decode(data, validate=True)
            except ValueError:  # binascii.Error, or non-ASCII text
                raise _invalid(f"{path}.file_data", "expected base64 data or a data URL.") from None
            return Content.from_data(raw, "application/octet-stream", name=name)
        return _uri_content(
            _require_str(part, "file_url", path),
            f"{path}.file_url",
            default_media_type="application/octet-stream",
        )
    raise _invalid(f"{path}.type", f"content parts of type '{kind}' are not supported.")


_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+*-]+)?(;[^,]*)?,", re.ASCII)


def _uri_content(url: str, param: str, *, default_media_type: str) -> Content:
    if url.startswith("data:"):
        match = _DATA_URL.match(url)
        if match is None or not (match[2] or "").endswith(";base64"):
            raise _invalid(param, "expected a base64 data URL like 'data:image/png;base64,...'.")
        try:
            raw = base64.b64decode(url[match.end() :], validate=True)
        except ValueError:  # binascii.Error, or non-ASCII text
            raise _invalid(param, "the data URL does not hold valid base64.") from None
        return Content.from_data(raw, match[1] or default_media_type)
    if not url.startswith(("https://", "http://")):
        raise _invalid(param, "expected an http(s) URL or a data URL.")
    return Content.from_uri(url, media_type=default_media_type)
