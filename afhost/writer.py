"""Storing finished foreground runs in batches, from one thread.

Writing a run costs far more than running the demo agent; under load, the runs that finish
while one batch is being written are stored together in the next, so a busy server pays one
INSERT and one commit per batch instead of per request. Nothing waits for company: a lone run
is written at once. The request still only answers once its run is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

from django.db import connections

from afhost import services
from afhost.models import Run
from afhost.types import HostedRunResult

logger = logging.getLogger(__name__)


Pending = tuple[Run, HostedRunResult, list[dict], asyncio.Future]


class RunWriter:
    def __init__(self) -> None:
        self._pending: list[Pending] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    async def store(self, run: Run, result: HostedRunResult, output_items: list[dict]) -> None:
        """Insert a prepared run with its outcome; returns once it is committed."""
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            self._pending.append((run, result, output_items, future))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._write_forever, name="run-writer", daemon=True
                )
                self._thread.start()
        self._wake.set()
        await future

    def _write_forever(self) -> None:
        while True:
            if not self._wake.is_set():
                # Going idle: the connection goes back (to the pool, on PostgreSQL). Under load
                # the next batch is already waiting and keeps it; reconnecting per batch cost
                # SQLite ~0.15 ms a run.
                connections.close_all()
            self._wake.wait()
            with self._lock:
                batch, self._pending = self._pending, []
                self._wake.clear()
            if batch:
                self._write(batch)

    def _write(self, batch: list[Pending]) -> None:
        for (*_, future), error in zip(batch, self._store(batch), strict=True):
            with contextlib.suppress(RuntimeError):  # its event loop has closed: nobody waits
                future.get_loop().call_soon_threadsafe(_settle, future, error)

    def _store(self, batch: list[Pending]) -> list[BaseException | None]:
        """Store the batch; each run's error, or None. A run that cannot be stored fails alone,
        not the runs that happened to finish at the same time."""
        try:
            services.store_finished_runs(
                finished=[(run, result, items) for run, result, items, _ in batch]
            )
            return [None] * len(batch)
        except Exception as exc:
            connections.close_all()  # a broken connection is not used again
            for run, *_ in batch:  # rolled back: unsaved again
                run.pk, run._state.adding = None, True
            if len(batch) == 1:
                logger.exception("storing run %s failed", batch[0][0].public_id)
                return [exc]
        return [error for pending in batch for error in self._store([pending])]


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled meanwhile
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


run_writer = RunWriter()
