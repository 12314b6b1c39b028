"""`/invocations_ws`: invocations over a WebSocket, one turn per text frame, in one session.

The client sends the body of a POST /invocations as a text frame (`{"message", "options"}`)
and gets the frames a streamed invocation sends, as JSON text frames: `{"type": "delta",
"text"}`... then `{"type": "done", "session_id", "invocation_id"}`, or `{"type": "error",
"message", "code", "status"}` (a bad frame leaves the connection open). One invocation runs at
a time per connection (a frame sent meanwhile gets a `busy` error), and a client that leaves
mid-turn cancels it, as a client leaving a stream does. The close codes are
those of Microsoft's host: 1000 when the client is done, 1011 when the server fails, and
4000 + the HTTP status for a connection refused (4401 without a valid key, 4403 for a caller
linking refuses).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import uuid
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from afhost.db import in_thread
from channels_app import turns
from channels_app.auth import ApiCaller, authenticate
from channels_app.exceptions import ApiError, refused
from channels_app.invocations.schemas import InvalidInvocation, parse_invocation, session_for
from channels_app.invocations.views import invocation_request, start
from linking.services import Allowed

logger = logging.getLogger(__name__)

CLOSE_INTERNAL_ERROR = 1011


class InvocationsConsumer(AsyncWebsocketConsumer):
    caller: ApiCaller
    session_id: str
    # The turn under way: one at a time per connection, cancelled if the client goes.
    turn: asyncio.Task | None = None

    async def connect(self) -> None:
        # Accepted first, as Microsoft's host does, so that a refusal can say why.
        await self.accept()
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in self.scope["headers"]
        }
        query = parse_qs(self.scope["query_string"].decode("latin-1"))
        self.session_id = session_for((query.get("agent_session_id") or [None])[0])
        try:
            self.caller = await authenticate(headers)
            _, outcome = await in_thread(
                turns.admit, self.caller.identity, verified_claims=self.caller.verified_claims
            )
            if not isinstance(outcome, Allowed):
                raise refused(outcome)
        except ApiError as exc:
            await self._error(exc.message, code=exc.code or "refused", status=exc.status)
            await self.close(code=4000 + exc.status)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            await self._error("Send each invocation as a JSON text frame.", status=400)
        elif len(text_data) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            await self._error("The invocation is too large.", code="request_too_large", status=413)
        elif self.turn is not None and not self.turn.done():
            await self._error(
                "One invocation at a time: wait for the done frame.", code="busy", status=409
            )
        else:
            self.turn = asyncio.ensure_future(self._answer(text_data))

    async def disconnect(self, code: int) -> None:
        if self.turn is not None:  # nobody is listening: the run is stored as cancelled
            self.turn.cancel()

    async def _answer(self, text: str) -> None:
        try:
            await self._invoke(text)
        except InvalidInvocation as exc:
            await self._error(exc.message, status=exc.status)
        except ApiError as exc:
            await self._error(exc.message, code=exc.code or "refused", status=exc.status)
        except Exception:
            logger.exception("invocations_ws session %s failed", self.session_id)
            await self.close(code=CLOSE_INTERNAL_ERROR)

    async def _invoke(self, text: str) -> None:
        body = dataclasses.replace(parse_invocation(text.encode()), stream=True)
        if body.background:
            raise InvalidInvocation("Start a long-running invocation with POST /invocations.")
        invocation_id = str(uuid.uuid4())
        turn = await start(
            invocation_request(
                body, self.caller, invocation_id=invocation_id, session_id=self.session_id
            )
        )
        async with contextlib.aclosing(turn.stream()) as batches:
            async for frames in batches:
                for frame in frames:
                    data = frame["data"]
                    if frame["event"] == "done":
                        data = {**data, "invocation_id": invocation_id}
                    await self.send(text_data=json.dumps({"type": frame["event"], **data}))

    async def _error(self, message: str, *, code: str = "invalid_request", status: int) -> None:
        frame = {"type": "error", "message": message, "code": code, "status": status}
        await self.send(text_data=json.dumps(frame))
