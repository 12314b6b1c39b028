"""Storing foreground runs in batches, from one thread.

A foreground run is inserted as it starts, so that it is visible (`in_progress`) while its
model works, and updated when it ends. Writing a run costs far more than running the demo
agent: under load, the runs that start or end while one batch is being written are stored
together in the next, so a busy server pays one INSERT and one commit per batch instead of two
statements and commits per request; a run that starts and ends within one batch is inserted
once, finished. Nothing waits for company: a lone run is written at once. The request only
answers once its finished run is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass

from django.db import connections

from afhost import services
from afhost.services import StartedRun
from afhost.types import HostedRunResult

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Write:
    started: StartedRun
    # None for a run that starts; the outcome, and who waits for it, for one that ends.
    result: HostedRunResult | None = None
    output_items: list[dict] | None = None
    future: asyncio.Future | None = None


class RunWriter:
    def __init__(self) -> None:
        self._pending: list[_Write] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, started: StartedRun) -> None:
        """Insert a prepared run as in progress, soon; nothing waits for it."""
        self._add(_Write(started))

    async def start_visibly(self, started: StartedRun) -> None:
        """Insert a prepared run as in progress; returns once it is committed (a stream's first
        event names the run, and the client may retrieve it at once)."""
        future = asyncio.get_running_loop().create_future()
        self._add(_Write(started, future=future))
        await future

    async def finish(
        self, started: StartedRun, result: HostedRunResult, output_items: list[dict]
    ) -> None:
        """Store a started run's outcome; returns once it is committed."""
        future = asyncio.get_running_loop().create_future()
        self._add(_Write(started, result, output_items, future))
        await future

    def _add(self, write: _Write) -> None:
        with self._lock:
            self._pending.append(write)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._write_forever, name="run-writer", daemon=True
                )
                self._thread.start()
        self._wake.set()

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

    def _write(self, batch: list[_Write]) -> None:
        for write, error in zip(batch, self._store(batch), strict=True):
            if error is not None and write.future is None:
                logger.error("inserting run %s failed: %s", write.started.run.public_id, error)
            if write.future is not None:
                with contextlib.suppress(RuntimeError):  # its event loop has closed: nobody waits
                    write.future.get_loop().call_soon_threadsafe(_settle, write.future, error)

    def _store(self, batch: list[_Write]) -> list[BaseException | None]:
        """Store the batch; each write's error, or None. A run that cannot be stored fails alone,
        not the runs that happened to start or end at the same time."""
        ending = {id(write.started) for write in batch if write.result is not None}
        unsaved = [write.started.run for write in batch if write.started.run.pk is None]
        try:
            services.store_runs(
                started=[
                    write.started
                    for write in batch
                    if write.result is None and id(write.started) not in ending
                ],
                finished=[
                    (write.started, write.result, write.output_items)  # type: ignore[misc]
                    for write in batch
                    if write.result is not None
                ],
            )
            return [None] * len(batch)
        except Exception as exc:
            connections.close_all()  # a broken connection is not used again
            for run in unsaved:  # rolled back: unsaved again
                run.pk, run._state.adding = None, True
            if len(batch) == 1:
                logger.exception("storing run %s failed", batch[0].started.run.public_id)
                return [exc]
        return [error for write in batch for error in self._store([write])]


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled meanwhile
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


run_writer = RunWriter()
