"""Following the stored events of streamed background runs, for the streams a web process
serves.

However many streams a process has open, and on however many runs, one poller reads what is
new for all of them: two queries every AFHOST_POLL_INTERVAL, in a pool thread whose connection
goes back at once. A waiting stream holds no thread and no database connection, and a thousand
streams cost the database what one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncGenerator

from django.conf import settings

from afhost.db import in_thread
from afhost.models import Run
from afhost.selectors import runs_progress

logger = logging.getLogger(__name__)


class _Follower:
    """One stream: the last event it was given, and what arrived for it since it looked."""

    __slots__ = ("after", "arrived", "ended", "ready")

    def __init__(self, after: int) -> None:
        self.after = after
        self.arrived: list[dict] = []
        self.ended = False
        self.ready = asyncio.Event()


class RunTails:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def _for_this_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # the first stream, or a new event loop (tests)
            self._loop = loop
            self._followers: dict[int, set[_Follower]] = defaultdict(set)
            self._poller: asyncio.Task | None = None
            self._joined = asyncio.Event()

    async def follow(self, *, run: Run, after: int) -> AsyncGenerator[list[dict], None]:
        """Batches of the run's stored events numbered above `after`, until it ends (or is
        deleted)."""
        self._for_this_loop()
        follower = _Follower(after)
        self._followers[run.pk].add(follower)
        self._joined.set()
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll_while_followed())
        try:
            while True:
                await follower.ready.wait()
                follower.ready.clear()
                events, follower.arrived = follower.arrived, []
                if events:
                    yield events
                if follower.ended:
                    return
        finally:
            followers = self._followers.get(run.pk)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._followers[run.pk]

    async def _poll_while_followed(self) -> None:
        while True:
            if not self._followers:
                self._poller = None
                return
            self._joined.clear()
            # Only streams that were there when the cursors were taken are served from this
            # read: one that joined meanwhile may need events from before them.
            polled = {pk: list(followers) for pk, followers in self._followers.items()}
            cursors = {pk: min(f.after for f in followers) for pk, followers in polled.items()}
            try:
                progress = await in_thread(runs_progress, cursors=cursors)
            except Exception:
                # A database blip (a pool timeout, a restart): the streams wait, kept alive,
                # and the next round reads again.
                logger.exception("reading the events of %d streamed run(s) failed", len(cursors))
                progress = {}
            for pk, (status, events) in progress.items():
                ended = status is None or status in Run.TERMINAL_STATUSES
                for follower in polled[pk]:
                    new = [e for e in events if e["sequence_number"] > follower.after]
                    if new:
                        follower.arrived.extend(new)
                        follower.after = new[-1]["sequence_number"]
                    follower.ended = ended
                    if new or ended:
                        follower.ready.set()
            # Until the next round, or a new stream, which wants its replay at once.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.AFHOST_POLL_INTERVAL):
                    await self._joined.wait()


run_tails = RunTails()
