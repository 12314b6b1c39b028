"""The worker engine: many turns at once in each worker process.

django-q2 hands a worker process one task at a time and waits for it to return. A turn is
mostly waiting on a remote model, so a task here only admits its job into the process's engine,
an asyncio event loop in a thread of its own, and returns: up to AFHOST_WORKER_CONCURRENCY jobs
run there at once, each awaiting its model while the others go on. When the engine is full, the
task waits for a free slot, so a busy worker stops taking tasks and an idle one gets them.

The rows stay the truth and django-q2 only carries their ids: a job leases its row before
working on it (afhost.leases), so the jobs a dead process held are free again within
AFHOST_LEASE_SECONDS, and the sweepers, which the engine runs every third of that, hand them
out again. Database work is short hops on the engine's DB_THREADS threads, each keeping its
connection; a waiting job holds no thread and no connection.

A worker process that stops (Ctrl-C or SIGTERM to `manage.py worker`, or a recycle) gives the
jobs it holds DRAIN_SECONDS to finish as it exits. Those still running then are cancelled:
other workers take them over once their leases run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import async_to_sync
from django.conf import settings

from afhost.db import db_call, use_worker_threads
from afhost.registry import sweepers

logger = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]

DRAIN_SECONDS = 5.0
# Threads (each with its database connection) the engine's jobs make their database hops on.
DB_THREADS = 4


class Engine:
    def __init__(self, *, concurrency: int, sweepers: Sequence[Callable[[], object]]) -> None:
        self.sweepers = list(sweepers)
        self._slots = threading.BoundedSemaphore(concurrency)
        self._loop = asyncio.new_event_loop()
        self._running: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        self._thread = threading.Thread(target=self._serve, name="afhost-engine", daemon=True)
        self.db_threads = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="afhost-db")

    def start(self) -> None:
        self._thread.start()
        # Stop when the process exits, before Python shuts down the thread pools the jobs'
        # database hops run on (concurrent.futures registers its own exit hook the same way).
        threading._register_atexit(self.stop)  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop sweeping, give the running jobs DRAIN_SECONDS, cancel the rest; wait for that."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join()

    def submit(self, job: Job, *, name: str, wait: float) -> bool:
        """Run `job` in the engine once a slot is free; False if none freed up within `wait`."""
        if not self._slots.acquire(timeout=wait):
            logger.warning("engine full for %.0f s: %s not admitted", wait, name)
            return False
        self._loop.call_soon_threadsafe(self._start_job, job, name)
        return True

    def owns_current_loop(self) -> bool:
        return asyncio.get_running_loop() is self._loop

    def _start_job(self, job: Job, name: str) -> None:
        task = self._loop.create_task(self._guard(job, name), name=name)
        self._running.add(task)
        task.add_done_callback(self._job_done)

    async def _guard(self, job: Job, name: str) -> None:
        try:
            await job()
        except Exception:
            # The job's rows say what happened (their leases run out); nothing else to do here.
            logger.exception("job %s failed", name)

    def _job_done(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._slots.release()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._housekeeping())
            self._loop.run_until_complete(self._drain())
        finally:
            self._loop.close()

    async def _housekeeping(self) -> None:
        """Run the sweepers every third of a lease, until the engine stops."""
        interval = settings.AFHOST_LEASE_SECONDS / 3
        while not self._stopping.is_set():
            await self._sweep()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)

    async def _sweep(self) -> None:
        for sweep in self.sweepers:
            try:
                await db_call(sweep)()
            except Exception:
                logger.exception("sweeper %s failed", sweep.__qualname__)

    async def _drain(self) -> None:
        if not self._running:
            return
        logger.info("worker stopping: finishing %d job(s)", len(self._running))
        _, unfinished = await asyncio.wait(set(self._running), timeout=DRAIN_SECONDS)
        for task in unfinished:
            task.cancel()
        for task in unfinished:
            with contextlib.suppress(asyncio.CancelledError):
                await task


_engine: Engine | None = None


async def _await(job: Job) -> None:
    await job()


def start_engine(**kwargs) -> None:
    """Start this process's engine: connected to django-q2's post_spawn, sent in each worker."""
    global _engine
    if _engine is None:
        _engine = Engine(concurrency=settings.AFHOST_WORKER_CONCURRENCY, sweepers=sweepers())
        use_worker_threads(_engine.db_threads)
        _engine.start()


def in_engine() -> bool:
    """Whether the running code is one of this process's engine jobs."""
    return _engine is not None and _engine.owns_current_loop()


def run_job(job: Job, *, name: str) -> None:
    """Run a task's job: in the engine in a worker process, or to its end anywhere else (django-q2's
    sync mode, management commands, tests).

    A job that was not admitted (the engine stayed full) leaves its row as it was, for the
    sweepers to hand out again.
    """
    if _engine is None:
        async_to_sync(_await)(job)
        return
    # Below django-q2's task timeout, which would kill the process with every job in it.
    _engine.submit(job, name=name, wait=max(1.0, settings.Q_CLUSTER["timeout"] - 30))
