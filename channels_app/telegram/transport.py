"""python-telegram-bot's HTTP requests, on aiohttp.

PTB's own `HTTPXRequest` costs ~1.5 ms of CPU per Bot API call; this one ~0.5 ms (PTB's share
included), which counts twice a Telegram turn (typing, then the answer) and once a push
(bench/README.md). httpx's pool also looks at every connection whenever a request is queued or a
connection freed (`has_expired()`: a `poll()` and a `getpeername()` per idle socket), ~10 % of a
busy worker; aiohttp's pool learns of closed connections from the event loop instead.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import aiohttp
import certifi
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData


class AnswerTimedOut(TimedOut):
    """The request went out, but its answer did not come in time: it may have taken effect."""


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Built once per process: loading the CA bundle for every Bot costs ~40 ms of CPU.
    return ssl.create_default_context(cafile=certifi.where())


class AiohttpRequest(BaseRequest):
    """Bot API requests over at most `connections` keep-alive connections.

    Timeouts as PTB's: `connect` and `read` (between bytes of the answer). aiohttp has no timer
    for writing, so the answer to an upload is waited for `media_write` seconds longer (PTB's
    write timeout for media), as it cannot come before the upload is done. A request waits for a
    free connection as long as it takes, in aiohttp's queue, where waiting costs nothing; PTB's
    `pool_timeout` is not used.
    """

    def __init__(
        self,
        *,
        connections: int,
        read: float | None = 5.0,
        connect: float | None = 5.0,
        media_write: float | None = 20.0,
    ) -> None:
        self._connections = connections
        self._read, self._connect = read, connect
        self._media_write = media_write
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float | None:
        return self._read

    async def initialize(self) -> None:
        self._open()

    def _open(self) -> aiohttp.ClientSession:
        # Also on first use: PTB's HTTPXRequest works before initialize(), and so do our callers.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections, ssl=_tls_context()),
                headers={"User-Agent": self.USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=True,  # HTTPS_PROXY and friends, as httpx honours them
            )
        return self._session

    async def shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        session = self._open()
        files = request_data.multipart_data if request_data else None
        data: Any = request_data.json_parameters if request_data else None
        read = self._read if isinstance(read_timeout, DefaultValue) else read_timeout
        connect = self._connect if isinstance(connect_timeout, DefaultValue) else connect_timeout
        if files:
            form = aiohttp.FormData(data or {})
            for name, (filename, content, mimetype) in files.items():
                form.add_field(name, content, filename=filename, content_type=mimetype)
            data = form
            write = self._media_write if isinstance(write_timeout, DefaultValue) else write_timeout
            read = None if read is None or write is None else read + write
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)
        try:
            async with session.request(method, url, data=data, timeout=timeout) as response:
                return response.status, await response.read()
        except aiohttp.SocketTimeoutError as exc:
            raise AnswerTimedOut(f"Timed out waiting for the answer ({read} s)") from exc
        except aiohttp.ServerTimeoutError as exc:  # ConnectionTimeoutError
            raise TimedOut(f"Timed out connecting ({connect} s)") from exc
        except aiohttp.ClientError as exc:
            raise NetworkError(f"aiohttp.{type(exc).__name__}: {exc}") from exc
