"""A fake Telegram Bot API server on loopback, speaking the real HTTP protocol.

Stdlib only: an ``http.server.ThreadingHTTPServer`` served from a daemon thread. Point a real
python-telegram-bot ``Bot`` at it::

    with FakeTelegramApi(TOKEN) as fake:
        bot = telegram.Bot(TOKEN, base_url=f"{fake.url}/bot", base_file_url=f"{fake.url}/file/bot")
        ...
        assert fake.sent_texts(chat_id=42) == ["hello"]

Routes: ``GET|POST /bot<token>/<method>`` and ``GET /file/bot<token>/<file_path>``. A wrong
token answers 401 ``Unauthorized``, an unknown path 404 ``Not Found`` (both in the Bot API error
shape ``{"ok": false, "error_code": ..., "description": ...}``).

What python-telegram-bot 22.x sends on the wire (``telegram.request.HTTPXRequest``):

* Always ``POST``, also for parameterless methods such as ``getMe`` (empty form body). Only file
  downloads (``File.download_*``) use ``GET``.
* Never a JSON body. Without uploads the body is ``application/x-www-form-urlencoded``; with
  uploads it is ``multipart/form-data`` carrying the other parameters as plain form fields.
* Every value is a string: ``chat_id=42``, ``message_thread_id=7``, booleans as ``true`` /
  ``false``, and nested values (``reply_markup``, ``allowed_updates``, ``entities``,
  ``link_preview_options``, ``reply_parameters``...) as JSON text. This fake therefore
  JSON-decodes string values starting with ``[`` or ``{`` (except free-text fields like ``text``
  and ``caption``, and only when they parse) and turns integer strings into ``int`` for
  ``chat_id``, ``message_thread_id``, ``message_id``, ``offset``, ``limit``, ``timeout`` and
  ``reply_to_message_id``. Real JSON bodies are accepted too (values kept as sent, except that
  integer conversion).
* An ``InputFile`` that is not sent via ``attach://`` is a multipart file part named after the
  parameter (``photo``, ``document``) and no form field of that name; the fake records it as an
  :class:`UploadedFile` under that name.
* ``getUpdates`` is sent with the HTTP read timeout extended by the long-polling ``timeout``.
* ``File.download_*`` GETs ``<base_file_url>/<file_path>`` with the whole path percent-encoded,
  so the token arrives as ``123%3AABC``: the fake unquotes paths before matching the token.
* PTB connects over HTTP/1.1 keep-alive (httpx connection pool); the fake keeps connections
  open and closes them in :meth:`FakeTelegramApi.stop`.

Which PTB exception an error answer produces (``BaseRequest._request_wrapper``; it looks at the
HTTP status, not at ``error_code``):

* any status with ``parameters={"retry_after": n}`` -> ``telegram.error.RetryAfter`` (checked
  before the status; ``parameters={"migrate_to_chat_id": id}`` -> ``ChatMigrated``). Reading
  ``RetryAfter.retry_after`` gives an ``int`` plus a ``PTBDeprecationWarning`` unless
  ``PTB_TIMEDELTA=true``, where it is a ``datetime.timedelta``.
* 400 -> ``BadRequest``; 401 and 404 -> ``InvalidToken`` (so a wrong token raises
  ``InvalidToken("Unauthorized")``); 403 -> ``Forbidden``; 409 -> ``Conflict``; 500, 502 and
  every other status -> ``NetworkError``. All of them subclass ``TelegramError``; ``BadRequest``
  subclasses ``NetworkError``. The exception message is the ``description``, except that
  ``TelegramError`` strips a leading ``"Bad Request: "`` and capitalizes the rest (``"Bad
  Request: can't parse entities: x"`` -> ``"Can't parse entities: x"``; ``"Forbidden: "`` stays).
* ``Bot.initialize()`` (``async with bot``) re-raises a rejected ``getMe`` as
  ``InvalidToken("The token `...` was rejected by the server.")``.
* ``RetryAfter`` builds its message from ``retry_after``, so the ``PTBDeprecationWarning`` fires
  as soon as the exception is raised.

Methods with canned results: ``getMe``, ``sendMessage``, ``sendPhoto``, ``sendDocument``,
``editMessageText``, ``getUpdates`` (long polling, at most ``MAX_LONG_POLL_SECONDS``; 409
``Conflict`` while a webhook is set), ``setWebhook``, ``deleteWebhook``, ``getWebhookInfo``,
``getFile``. Any other method answers ``true``. Uploaded photos and documents are registered as
files, so ``getFile`` and downloads work for the ``file_id`` the fake returned.

Latency: ``FakeTelegramApi(TOKEN, latency=0.05)`` answers every method call 50 ms after it
arrived, like a round trip to api.telegram.org; ``set_latency(0.05, method="sendMessage")`` sets
it for one method (``method=None``: the default for all). A call is still recorded on arrival
(``Call.at``); each connection has its own thread, so calls on different connections wait side
by side.
"""

from __future__ import annotations

import email.policy
import itertools
import json
import re
import socket
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["Call", "FakeTelegramApi", "UploadedFile"]

# The longest a getUpdates call waits for updates here, whatever ``timeout`` it asked for.
MAX_LONG_POLL_SECONDS = 1.0

_INT_PARAMS = frozenset(
    {
        "chat_id",
        "message_thread_id",
        "message_id",
        "offset",
        "limit",
        "timeout",
        "reply_to_message_id",
    }
)
# Free text that may legitimately start with "[" or "{": never JSON-decoded.
_TEXT_PARAMS = frozenset(
    {"text", "caption", "question", "explanation", "title", "description", "short_description"}
)
_INT_RE = re.compile(r"-?\d+")
_WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)


@dataclass(frozen=True)
class UploadedFile:
    """A file part of a multipart request."""

    filename: str | None
    content_type: str
    content: bytes


@dataclass(frozen=True)
class Call:
    """One recorded Bot API call. ``at`` is ``time.monotonic()`` at arrival."""

    method: str
    params: dict[str, Any]
    at: float
    failed: bool = False


@dataclass
class _Failure:
    status: int
    description: str
    parameters: dict[str, Any] | None


@dataclass
class _Webhook:
    url: str
    secret_token: str | None
    allowed_updates: list[str] | None


class _ApiError(Exception):
    def __init__(
        self, status: int, description: str, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"


def _error_body(status: int, description: str, parameters: dict[str, Any] | None = None) -> bytes:
    payload: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters is not None:
        payload["parameters"] = parameters
    return json.dumps(payload).encode()


def _normalize_int(name: str, value: Any) -> Any:
    if name in _INT_PARAMS and isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        return int(value.strip())
    return value


def _decode_form_value(name: str, value: Any) -> Any:
    if isinstance(value, str) and name not in _TEXT_PARAMS and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return _normalize_int(name, value)


def _parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise _ApiError(400, "Bad Request: can't parse multipart/form-data body")
    params: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            params[str(name)] = UploadedFile(
                filename=filename, content_type=part.get_content_type(), content=payload
            )
            continue
        charset = part.get_content_charset() or "utf-8"
        params[str(name)] = payload.decode(charset, errors="replace")
    return params


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True  # server_close() joins handler threads (after close_connections)
    allow_reuse_address = True
    # socketserver's default backlog is 5: dozens of clients connecting at once would see
    # dropped connections and 1 s SYN retries, which the real Bot API does not cause.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeTelegramApi) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Condition()
        self._busy = 0  # requests being answered right now
        self.stopping = False
        super().__init__(address, _Handler)

    def begin_request(self) -> None:
        with self._connections_lock:
            self._busy += 1

    def end_request(self) -> None:
        with self._connections_lock:
            self._busy -= 1
            self._connections_lock.notify_all()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self, grace: float = 2.0) -> None:
        """Let answers in flight finish, then unblock threads idling on keep-alive connections."""
        with self._connections_lock:
            self._connections_lock.wait_for(lambda: self._busy == 0, timeout=grace)
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, every call would stall ~40 ms
    # on loopback waiting for a delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def do_GET(self) -> None:  # noqa: N802
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        self.server.begin_request()
        try:
            body = self._read_body()
            response = self.server.fake._handle(
                self.command, self.path, self.headers.get("Content-Type", ""), body
            )
            if self.server.stopping:
                self.close_connection = True
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(response.body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.server.end_request()


class FakeTelegramApi:
    """A fake Bot API for one bot token. Thread-safe; see the module docstring."""

    def __init__(
        self,
        token: str,
        *,
        port: int = 0,
        bot_username: str = "test_bot",
        bot_id: int = 123456,
        latency: float = 0.0,
    ) -> None:
        if latency < 0:
            raise ValueError("latency must be >= 0")
        self.token = token
        # Seconds from a method call's arrival to its answer, by method (None: any method).
        self._latency: dict[str | None, float] = {None: latency}
        self.bot_username = bot_username
        self.bot_id = bot_id
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._calls: list[Call] = []
        self._failures: dict[str, deque[_Failure]] = {}
        self._pending: list[dict[str, Any]] = []
        self._next_update_id = 1
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._files: dict[str, tuple[bytes, str]] = {}
        self._upload_ids = itertools.count(1)
        self._webhook: _Webhook | None = None
        self._methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "getMe": lambda _params: self.bot_user,
            "sendMessage": self._send_message,
            "sendPhoto": self._send_photo,
            "sendDocument": self._send_document,
            "editMessageText": self._edit_message_text,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "getFile": self._get_file,
        }

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeTelegramApi:
        if self._server is not None:
            raise RuntimeError("FakeTelegramApi already started")
        self._stopping = False
        self._server = _Server(("127.0.0.1", self._port), self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-telegram-api-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.stopping = True
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeTelegramApi:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeTelegramApi is not running")
        return f"http://127.0.0.1:{self._port}"

    @property
    def bot_user(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "Test",
            "username": self.bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    # --- inspection ------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """A snapshot of every recorded call, oldest first (failed attempts included)."""
        with self._cond:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        with self._cond:
            return [call for call in self._calls if call.method == method]

    def calls_after(self, count: int) -> list[Call]:
        """The calls recorded after the first `count` (a poller's new ones, without copying
        every call each time)."""
        with self._cond:
            return self._calls[count:]

    def sent_texts(self, chat_id: int | str | None = None) -> list[str]:
        """Texts of successful ``sendMessage`` calls, optionally only those to ``chat_id``."""
        wanted = _normalize_int("chat_id", chat_id)
        return [
            str(call.params.get("text", ""))
            for call in self.calls_to("sendMessage")
            if not call.failed and (wanted is None or call.params.get("chat_id") == wanted)
        ]

    def wait_for(self, method: str, count: int = 1, timeout: float = 10.0) -> list[Call]:
        """Block until ``count`` calls of ``method`` were recorded; return all of them."""

        def matching() -> list[Call]:
            return [call for call in self._calls if call.method == method]

        with self._cond:
            if self._cond.wait_for(lambda: len(matching()) >= count, timeout=timeout):
                return matching()
            recorded = [(call.method, call.params, call.failed) for call in self._calls]
        raise AssertionError(
            f"expected {count} call(s) of {method!r} within {timeout}s, "
            f"got {len([c for c in recorded if c[0] == method])}; recorded: {recorded!r}"
        )

    @property
    def webhook(self) -> dict[str, Any] | None:
        """The active webhook (``url``, ``secret_token``, ``allowed_updates``) or None."""
        with self._cond:
            if self._webhook is None:
                return None
            return dict(vars(self._webhook))

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._pending)

    # --- arrangement -----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget recorded calls, queued failures and pending updates."""
        with self._cond:
            self._calls.clear()
            self._failures.clear()
            self._pending.clear()
            self._cond.notify_all()

    def set_latency(self, seconds: float, *, method: str | None = None) -> None:
        """Answer calls of ``method`` (every method without one of its own, if None) ``seconds``
        after they arrive."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        with self._cond:
            self._latency[method] = seconds

    def fail_next(
        self,
        method: str,
        status: int,
        description: str,
        *,
        parameters: dict[str, Any] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with this Bot API error."""
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._cond:
            queue = self._failures.setdefault(method, deque())
            queue.extend(_Failure(status, description, parameters) for _ in range(times))

    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an update for getUpdates; assigns ``update_id`` if missing. Returns it."""
        with self._cond:
            update = dict(update)
            if "update_id" not in update:
                update["update_id"] = self._next_update_id
            self._next_update_id = max(self._next_update_id, int(update["update_id"]) + 1)
            self._pending.append(update)
            self._cond.notify_all()
            return int(update["update_id"])

    def add_file(self, file_id: str, content: bytes, *, file_path: str | None = None) -> None:
        """Make ``file_id`` known to getFile and downloadable from the file route."""
        with self._cond:
            self._files[file_id] = (bytes(content), file_path or f"photos/{file_id}.jpg")

    # --- request handling ------------------------------------------------------------------

    def _handle(self, verb: str, raw_path: str, content_type: str, body: bytes) -> _Response:
        split = urlsplit(raw_path)
        # File.download_* percent-encodes the whole path, including the ":" of the token.
        path = unquote(split.path)
        file_prefix = "/file/bot"
        if verb == "GET" and path.startswith(file_prefix):
            token, _, file_path = path[len(file_prefix) :].partition("/")
            if token != self.token:
                return _Response(401, _error_body(401, "Unauthorized"))
            return self._download(file_path)
        if path.startswith("/bot"):
            token, _, method = path[len("/bot") :].partition("/")
            if method and "/" not in method:
                if token != self.token:
                    return _Response(401, _error_body(401, "Unauthorized"))
                return self._call(method, split.query, content_type, body)
        return _Response(404, _error_body(404, "Not Found"))

    def _download(self, file_path: str) -> _Response:
        with self._cond:
            content = next((data for data, path in self._files.values() if path == file_path), None)
        if content is None:
            return _Response(404, _error_body(404, "Not Found"))
        return _Response(200, content, content_type="application/octet-stream")

    def _parse_params(self, query: str, content_type: str, body: bytes) -> dict[str, Any]:
        params: dict[str, Any] = {
            name: _decode_form_value(name, value)
            for name, value in parse_qsl(query, keep_blank_values=True)
        }
        mime = content_type.split(";", 1)[0].strip().lower()
        if not body:
            return params
        if mime == "application/json":
            try:
                decoded = json.loads(body)
            except ValueError as exc:
                raise _ApiError(400, "Bad Request: can't parse JSON body") from exc
            if not isinstance(decoded, dict):
                raise _ApiError(400, "Bad Request: JSON body must be an object")
            params.update({name: _normalize_int(name, value) for name, value in decoded.items()})
        elif mime == "multipart/form-data":
            params.update(
                {
                    name: _decode_form_value(name, value)
                    for name, value in _parse_multipart(content_type, body).items()
                }
            )
        else:  # application/x-www-form-urlencoded, also when the type is missing
            text = body.decode("utf-8", errors="replace")
            params.update(
                {
                    name: _decode_form_value(name, value)
                    for name, value in parse_qsl(text, keep_blank_values=True)
                }
            )
        return params

    def _record(self, method: str, params: dict[str, Any], at: float, failed: bool) -> None:
        with self._cond:
            self._calls.append(Call(method=method, params=params, at=at, failed=failed))
            self._cond.notify_all()

    def _call(self, method: str, query: str, content_type: str, body: bytes) -> _Response:
        at = time.monotonic()
        response = self._answer(method, at, query, content_type, body)
        with self._cond:
            latency = self._latency.get(method, self._latency[None])
        if latency > 0:
            time.sleep(max(0.0, at + latency - time.monotonic()))
        return response

    def _answer(
        self, method: str, at: float, query: str, content_type: str, body: bytes
    ) -> _Response:
        try:
            params = self._parse_params(query, content_type, body)
        except _ApiError as exc:
            self._record(method, {}, at, failed=True)
            return _Response(exc.status, _error_body(exc.status, exc.description))
        with self._cond:
            queue = self._failures.get(method)
            failure = queue.popleft() if queue else None
        if failure is not None:
            self._record(method, params, at, failed=True)
            return _Response(
                failure.status,
                _error_body(failure.status, failure.description, failure.parameters),
            )
        try:
            if method == "getUpdates":
                result = self._get_updates(params, at)  # records the call itself
            else:
                result = self._methods.get(method, lambda _params: True)(params)
                self._record(method, params, at, failed=False)
        except _ApiError as exc:
            self._record(method, params, at, failed=True)
            return _Response(exc.status, _error_body(exc.status, exc.description, exc.parameters))
        return _Response(200, json.dumps({"ok": True, "result": result}).encode())

    # --- methods ---------------------------------------------------------------------------

    def _chat(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _ApiError(400, "Bad Request: chat_id is empty")
        if isinstance(chat_id, str):  # "@channelusername"
            username = chat_id.lstrip("@")
            fake_id = -1_000_000_000_000 - zlib.crc32(username.encode())
            return {"id": fake_id, "type": "channel", "title": username, "username": username}
        if isinstance(chat_id, int) and chat_id > 0:
            return {"id": chat_id, "type": "private", "first_name": "User"}
        return {"id": chat_id, "type": "supergroup", "title": "Test group"}

    def _message(self, params: dict[str, Any], **content: Any) -> dict[str, Any]:
        chat = self._chat(params)
        with self._cond:
            counter = self._message_ids.setdefault(chat["id"], itertools.count(1))
            message_id = next(counter)
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": chat,
            "from": self.bot_user,
            **content,
        }
        thread_id = params.get("message_thread_id")
        if thread_id is not None and thread_id != "":
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        return message

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        text = params.get("text")
        if text is None or text == "":
            raise _ApiError(400, "Bad Request: message text is empty")
        return self._message(params, text=str(text))

    def _media(self, params: dict[str, Any], name: str, suffix: str) -> dict[str, Any]:
        value = params.get(name)
        if isinstance(value, UploadedFile):
            file_id = f"fake-{name}-{next(self._upload_ids)}"
            self.add_file(file_id, value.content, file_path=f"{name}s/{file_id}{suffix}")
            size = len(value.content)
        elif isinstance(value, str) and value:
            file_id, size = value, None
        else:
            raise _ApiError(400, f"Bad Request: there is no {name} in the request")
        media: dict[str, Any] = {"file_id": file_id, "file_unique_id": _unique_id(file_id)}
        if size is not None:
            media["file_size"] = size
        return media

    def _with_caption(self, params: dict[str, Any], **content: Any) -> dict[str, Any]:
        caption = params.get("caption")
        if caption is not None:
            content["caption"] = str(caption)
        return self._message(params, **content)

    def _send_photo(self, params: dict[str, Any]) -> dict[str, Any]:
        photo = {**self._media(params, "photo", ".jpg"), "width": 1, "height": 1}
        return self._with_caption(params, photo=[photo])

    def _send_document(self, params: dict[str, Any]) -> dict[str, Any]:
        document = self._media(params, "document", "")
        upload = params.get("document")
        if isinstance(upload, UploadedFile) and upload.filename:
            document["file_name"] = upload.filename
            document["mime_type"] = upload.content_type
        return self._with_caption(params, document=document)

    def _edit_message_text(self, params: dict[str, Any]) -> dict[str, Any] | bool:
        if params.get("inline_message_id"):
            return True
        message_id = params.get("message_id")
        if not isinstance(message_id, int):
            raise _ApiError(400, "Bad Request: message identifier is not specified")
        text = params.get("text")
        if text is None or text == "":
            raise _ApiError(400, "Bad Request: text must be non-empty")
        now = int(time.time())
        return {
            "message_id": message_id,
            "date": now,
            "edit_date": now,
            "chat": self._chat(params),
            "from": self.bot_user,
            "text": str(text),
        }

    def _set_webhook(self, params: dict[str, Any]) -> bool:
        url = str(params.get("url") or "")
        allowed = params.get("allowed_updates")
        with self._cond:
            if _truthy(params.get("drop_pending_updates")):
                self._pending.clear()
            self._webhook = (
                _Webhook(
                    url=url,
                    secret_token=params.get("secret_token"),
                    allowed_updates=allowed if isinstance(allowed, list) else None,
                )
                if url
                else None
            )
            self._cond.notify_all()
        return True

    def _delete_webhook(self, params: dict[str, Any]) -> bool:
        with self._cond:
            if _truthy(params.get("drop_pending_updates")):
                self._pending.clear()
            self._webhook = None
        return True

    def _get_webhook_info(self, _params: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            info: dict[str, Any] = {
                "url": self._webhook.url if self._webhook else "",
                "has_custom_certificate": False,
                "pending_update_count": len(self._pending),
            }
            if self._webhook is not None and self._webhook.allowed_updates is not None:
                info["allowed_updates"] = list(self._webhook.allowed_updates)
        return info

    def _get_file(self, params: dict[str, Any]) -> dict[str, Any]:
        file_id = str(params.get("file_id") or "")
        with self._cond:
            known = self._files.get(file_id)
        if known is None:
            raise _ApiError(400, "Bad Request: invalid file_id")
        content, file_path = known
        return {
            "file_id": file_id,
            "file_unique_id": _unique_id(file_id),
            "file_size": len(content),
            "file_path": file_path,
        }

    def _get_updates(self, params: dict[str, Any], at: float) -> list[dict[str, Any]]:
        with self._cond:
            if self._webhook is not None:
                raise _ApiError(409, _WEBHOOK_CONFLICT)
            self._calls.append(Call(method="getUpdates", params=params, at=at))
            self._cond.notify_all()
        offset = params.get("offset")
        limit = params.get("limit")
        limit = min(max(limit, 1), 100) if isinstance(limit, int) else 100
        timeout = _as_float(params.get("timeout"))
        deadline = at + min(max(timeout, 0.0), MAX_LONG_POLL_SECONDS)
        with self._cond:
            self._confirm(offset)
            while True:
                batch = [dict(update) for update in self._pending[:limit]]
                remaining = deadline - time.monotonic()
                if batch or remaining <= 0 or self._stopping:
                    return batch
                self._cond.wait(remaining)
                self._confirm(offset)

    def _confirm(self, offset: Any) -> None:
        """Forget updates confirmed by ``offset`` (caller holds the lock)."""
        if not isinstance(offset, int):
            return
        if offset < 0:
            self._pending = self._pending[offset:]
        else:
            self._pending = [u for u in self._pending if int(u["update_id"]) >= offset]


def _unique_id(file_id: str) -> str:
    return f"u{zlib.crc32(file_id.encode()):08x}"


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
