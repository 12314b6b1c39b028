"""Static files (the admin's styles and scripts) served by WhiteNoise, on the event loop.

WhiteNoise's middleware is synchronous: under ASGI, Django would run it, for every browser
request, in a thread hop, and read each file it serves whole in a thread after warning ("must
consume synchronous iterators") once a process. This subclass looks a path up on the event loop
and streams a file in chunks read in a worker thread. The API routes never reach it: they run
their own middleware (afhost.handlers).
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import BinaryIO

from asgiref.sync import markcoroutinefunction
from django.http import HttpRequest, HttpResponse
from whitenoise.middleware import WhiteNoiseMiddleware

CHUNK_BYTES = 64 * 1024


async def _chunks(file: BinaryIO | None) -> AsyncIterator[bytes]:
    if file is None:  # HEAD, 304
        return
    while chunk := await asyncio.to_thread(file.read, CHUNK_BYTES):
        yield chunk


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> None:
        with warnings.catch_warnings():
            # "No directory at: STATIC_ROOT" (collectstatic has not run: the test suite, a
            # first start) is no reason to warn: WhiteNoise then serves nothing, and the
            # admin is unstyled until the production steps' collectstatic.
            warnings.filterwarnings("ignore", "No directory at", UserWarning)
            super().__init__(get_response)
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.autorefresh:  # DEBUG: looked up on disk every time
            if not request.path_info.startswith(self.static_prefix):
                return await self.get_response(request)
            static_file = await asyncio.to_thread(self.find_file, request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is None:
            return await self.get_response(request)
        response = await asyncio.to_thread(self.serve, static_file, request)  # opens the file
        response.streaming_content = _chunks(response.file_to_stream)
        return response
