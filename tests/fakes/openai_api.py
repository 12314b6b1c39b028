"""A fake OpenAI-compatible model service on loopback, speaking the real HTTP protocol.

Stdlib only: an ``http.server.ThreadingHTTPServer`` served from a daemon thread, like
``tests/fakes/telegram_api.py``. Point agent-framework-openai's clients (or the ``openai`` SDK)
at it::

    with FakeOpenAIApi(api_key="sk-test", models=["gpt-test"]) as fake:
        client = OpenAIChatClient(model="gpt-test", api_key="sk-test", base_url=f"{fake.url}/v1")
        ...
        assert fake.calls[-1].body["model"] == "gpt-test"

Routes, matched on the end of the path so that every base URL shape works (``/v1/...`` for
OpenAI and OpenAI-compatible servers, ``/openai/v1/...`` for Azure OpenAI's v1 API,
``/openai/deployments/<name>/chat/completions?api-version=...`` for Azure's deployment routes):

* ``GET .../models``: ``{"object": "list", "data": [{"id": ..., "object": "model", ...}]}``
  (404 after ``lists_models = False``, like servers without it).
* ``POST .../responses``: the Responses API, blocking or (``"stream": true``) as server-sent
  events: ``response.created``, ``response.in_progress``, ``response.output_item.added``,
  ``response.content_part.added``, one ``response.output_text.delta`` per word,
  ``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``,
  ``response.completed`` (with usage).
* ``POST .../chat/completions``: Chat Completions, blocking or streamed as
  ``chat.completion.chunk`` events (a role chunk, one content chunk per word, a chunk with
  ``finish_reason``, a usage chunk with no choices when ``stream_options.include_usage`` is set,
  then ``data: [DONE]``).

Streams use chunked transfer encoding on a keep-alive HTTP/1.1 connection, as real servers do;
``stream_delay`` pauses between events.

What agent-framework-openai 1.17 sends (recorded here, as :class:`Call`):

* ``OpenAIChatClient`` (Responses API): ``POST /responses`` with ``model``, ``input`` (a list
  of ``{"type": "message", "role", "content": [{"type": "input_text" | "output_text",
  "text"}]}`` items), ``instructions`` (the agent's, then the request's, joined by a newline),
  the options (``temperature``, ``store``...), ``include: ["reasoning.encrypted_content"]``
  unless the call uses provider-side storage, and ``"stream": true|false``. Streaming, it
  turns ``response.output_text.done`` into a text content with ``merge_mode="replace"``.
* ``OpenAIChatCompletionClient``: ``POST /chat/completions`` with ``model``, ``messages``
  (instructions as a leading ``system`` message), the options, ``"stream": true|false``, and
  when streaming ``stream_options: {"include_usage": true}``.
* Credentials: ``Authorization: Bearer <key>`` (OpenAI, OpenAI-compatible, and Azure with an
  Entra token) or ``api-key: <key>`` (Azure OpenAI key auth).

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: a wrong or missing
key answers 401 ``invalid_api_key`` (the key masked in the message, as OpenAI does), an unknown
model 404 ``model_not_found``, an unknown path 404. ``fail_with(status, ...)`` makes every model
call answer that error until ``reset()`` (429 and 5xx answers carry ``retry-after-ms: 1`` so the
SDK's retries stay quick).

The reply to a conversation is ``reply_to(model, texts)``: "<model> heard: <last user text>".
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Call", "FakeOpenAIApi", "reply_to"]


def reply_to(model: str, user_texts: list[str]) -> str:
    """What the fake model answers: it names itself and repeats the last user text."""
    last = user_texts[-1] if user_texts else ""
    return f"{model} heard: {last}"


@dataclass(frozen=True)
class Call:
    """One recorded request. ``body`` is the decoded JSON body ({} for a GET)."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int

    @property
    def key(self) -> str | None:
        """The credential the request carried (``api-key``, or the bearer token)."""
        if "api-key" in self.headers:
            return self.headers["api-key"]
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" else None


@dataclass
class _Failure:
    status: int
    code: str
    message: str


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    events: Iterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


class _ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None, kind: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind

    def answer(self) -> _Answer:
        body = {"error": {"message": self.message, "type": self.kind, "param": None}}
        body["error"]["code"] = self.code
        headers = {"retry-after-ms": "1"} if self.status == 429 or self.status >= 500 else {}
        return _Answer(self.status, json.dumps(body).encode(), headers=headers)


def _mask(key: str) -> str:
    return key[:3] + "*" * 8 + key[-4:] if len(key) > 8 else "*" * len(key)


def _sse(payload: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload)}\n\n".encode()


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [word if i == len(words) - 1 else word + " " for i, word in enumerate(words)]


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeOpenAIApi) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Unblock handler threads idling on keep-alive connections."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def do_GET(self) -> None:  # noqa: N802
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        answer = self.server.fake._handle(self.command, self.path, headers, raw)
        try:
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            if answer.events is None:
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
            else:
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for event in answer.events:
                    self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class FakeOpenAIApi:
    """A fake OpenAI-compatible service. Thread-safe; see the module docstring.

    ``api_key=None`` accepts any request, with or without a key (like a local Ollama).
    """

    def __init__(
        self,
        *,
        api_key: str | None = "sk-test-key",
        models: tuple[str, ...] | list[str] = ("gpt-test",),
        stream_delay: float = 0.0,
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.models = list(models)
        self.stream_delay = stream_delay
        # False: no GET /models (404), as on some OpenAI-compatible servers.
        self.lists_models = True
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._failure: _Failure | None = None
        self._ids = itertools.count(1)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeOpenAIApi:
        if self._server is not None:
            raise RuntimeError("FakeOpenAIApi already started")
        self._server = _Server(("127.0.0.1", self._port), self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-openai-api-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeOpenAIApi:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Scheme, host and port; add ``/v1`` for an OpenAI base URL."""
        if self._server is None:
            raise RuntimeError("FakeOpenAIApi is not running")
        return f"http://127.0.0.1:{self._port}"

    # --- control and inspection ------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._failure = None
            self.lists_models = True

    def fail_with(self, status: int, *, code: str = "server_error", message: str = "") -> None:
        """Answer every model call (not ``/models``) with this error until ``reset()``."""
        with self._lock:
            self._failure = _Failure(status, code, message or f"Scripted failure ({status}).")

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def model_calls(self) -> list[Call]:
        """Recorded calls to ``/responses`` and ``/chat/completions``, oldest first."""
        return [call for call in self.calls if call.method == "POST"]

    # --- serving ---------------------------------------------------------------------------

    def _handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> _Answer:
        path = urlsplit(target).path.rstrip("/")
        body: dict[str, Any] = {}
        try:
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise _ApiError(
                        400,
                        "We could not parse the JSON body of your request.",
                        code=None,
                        kind="invalid_request_error",
                    ) from None
            self._authenticate(headers)
            answer = self._route(method, path, body)
        except _ApiError as exc:
            answer = exc.answer()
        with self._lock:
            self._calls.append(Call(method, path, headers, body, answer.status))
        return answer

    def _authenticate(self, headers: dict[str, str]) -> None:
        if self.api_key is None:
            return
        given = headers.get("api-key")
        if given is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            given = token if scheme.lower() == "bearer" else None
        if given is None:
            raise _ApiError(
                401,
                "You didn't provide an API key.",
                code=None,
                kind="invalid_request_error",
            )
        if given != self.api_key:
            raise _ApiError(
                401,
                f"Incorrect API key provided: {_mask(given)}.",
                code="invalid_api_key",
                kind="invalid_request_error",
            )

    def _route(self, method: str, path: str, body: dict[str, Any]) -> _Answer:
        if method == "GET" and path.endswith("/models") and self.lists_models:
            return self._list_models()
        if method == "POST" and path.endswith("/responses"):
            return self._model_call(body, self._responses)
        if method == "POST" and path.endswith("/chat/completions"):
            return self._model_call(body, self._chat_completions)
        raise _ApiError(
            404, f"Invalid URL ({method} {path})", code=None, kind="invalid_request_error"
        )

    def _list_models(self) -> _Answer:
        data = [
            {"id": model, "object": "model", "created": 1700000000, "owned_by": "afhost-tests"}
            for model in self.models
        ]
        return _Answer(200, json.dumps({"object": "list", "data": data}).encode())

    def _model_call(self, body: dict[str, Any], answer) -> _Answer:
        with self._lock:
            failure = self._failure
        if failure is not None:
            raise _ApiError(failure.status, failure.message, code=failure.code, kind="api_error")
        model = body.get("model")
        if model not in self.models:
            raise _ApiError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
                kind="invalid_request_error",
            )
        return answer(body, model)

    def _pace(self, events: list[bytes]) -> Iterator[bytes]:
        for index, event in enumerate(events):
            if index and self.stream_delay:
                time.sleep(self.stream_delay)
            yield event

    # --- the Responses API -----------------------------------------------------------------

    def _responses(self, body: dict[str, Any], model: str) -> _Answer:
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        user_texts = [
            _text_of(item.get("content"))
            for item in items or []
            if isinstance(item, dict) and item.get("role") == "user"
        ]
        text = reply_to(model, user_texts)
        n = next(self._ids)
        response_id, message_id = f"resp_fake{n:06d}", f"msg_fake{n:06d}"
        usage = {
            "input_tokens": sum(len(t.split()) for t in user_texts),
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(text.split()),
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        part = {"type": "output_text", "text": text, "annotations": []}
        message = {
            "type": "message",
            "id": message_id,
            "role": "assistant",
            "status": "completed",
            "content": [part],
        }

        def response(status: str, output: list, usage: dict | None = None) -> dict[str, Any]:
            return {
                "id": response_id,
                "object": "response",
                "created_at": int(time.time()),
                "model": model,
                "status": status,
                "output": output,
                "parallel_tool_calls": False,
                "tool_choice": "auto",
                "tools": [],
                "temperature": body.get("temperature"),
                "store": body.get("store", True),
                "usage": usage,
            }

        if not body.get("stream"):
            done = response("completed", [message], usage)
            return _Answer(200, json.dumps(done).encode())
        sequence = itertools.count()

        def event(kind: str, **fields: Any) -> bytes:
            return _sse({"type": kind, "sequence_number": next(sequence), **fields}, kind)

        where = {"item_id": message_id, "output_index": 0, "content_index": 0}
        events = [
            event("response.created", response=response("in_progress", [])),
            event("response.in_progress", response=response("in_progress", [])),
            event(
                "response.output_item.added",
                output_index=0,
                item={**message, "status": "in_progress", "content": []},
            ),
            event("response.content_part.added", part={**part, "text": ""}, **where),
        ]
        events += [
            event("response.output_text.delta", delta=word, logprobs=[], **where)
            for word in _words(text)
        ]
        events += [
            event("response.output_text.done", text=text, logprobs=[], **where),
            event("response.content_part.done", part=part, **where),
            event("response.output_item.done", output_index=0, item=message),
            event("response.completed", response=response("completed", [message], usage)),
        ]
        return _Answer(200, events=self._pace(events))

    # --- Chat Completions ------------------------------------------------------------------

    def _chat_completions(self, body: dict[str, Any], model: str) -> _Answer:
        user_texts = [
            _text_of(message.get("content"))
            for message in body.get("messages") or []
            if isinstance(message, dict) and message.get("role") == "user"
        ]
        text = reply_to(model, user_texts)
        completion_id, created = f"chatcmpl-fake{next(self._ids):06d}", int(time.time())
        usage = {
            "prompt_tokens": sum(len(t.split()) for t in user_texts),
            "completion_tokens": len(text.split()),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not body.get("stream"):
            completion = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
            return _Answer(200, json.dumps(completion).encode())

        def chunk(choices: list, **extra: Any) -> bytes:
            return _sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": choices,
                    **extra,
                }
            )

        def delta(content: dict, finish_reason: str | None = None) -> list:
            return [
                {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}
            ]

        events = [chunk(delta({"role": "assistant", "content": ""}))]
        events += [chunk(delta({"content": word})) for word in _words(text)]
        events.append(chunk(delta({}, "stop")))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(chunk([], usage=usage))
        events.append(b"data: [DONE]\n\n")
        return _Answer(200, events=self._pace(events))
