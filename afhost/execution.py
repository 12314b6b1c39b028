"""Driving the target: the async half of a run, shared by every channel and the worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from agent_framework import AgentResponseUpdate, Message
from django.conf import settings

from afhost import services
from afhost.db import db_call
from afhost.exceptions import ConversationBusy
from afhost.model_presets import explain_model_failure
from afhost.models import Run
from afhost.registry import get_channel, get_streaming_channel
from afhost.selectors import next_event_sequence
from afhost.services import StartedRun
from afhost.tails import run_tails
from afhost.targets import TextAppends, get_target, hosts_workflow
from afhost.types import HostedRunResult
from afhost.workflows import hosted_run
from afhost.writer import run_writer

logger = logging.getLogger(__name__)

T = TypeVar("T")

AGENT_FAILED = "The agent failed to produce a response."
TOO_SLOW = "The agent took too long to answer."
# How often a turn waiting for its conversation looks again.
CONVERSATION_WAIT = 0.25


def _run_kwargs(run: Run) -> dict[str, Any]:
    options: dict[str, Any] = dict(run.options)
    if run.instructions:
        options["instructions"] = run.instructions
    return {"options": options} if options else {}


def _call_target(run: Run, messages: list[Message], *, stream: bool) -> Any:
    """Call the target for `run`. A workflow target reads which run it is in from `hosted_run`
    during the call: it keeps the run's checkpoints."""
    token = hosted_run.set(run)
    try:
        return get_target().run(messages, stream=stream, **_run_kwargs(run))  # type: ignore[call-overload]
    finally:
        hosted_run.reset(token)


def _failure(run: Run, exc: BaseException) -> HostedRunResult:
    logger.exception("run %s: the target raised", run.public_id, exc_info=exc)
    # A model service's failure is told in our words (never the provider's); others are not.
    code, message = explain_model_failure(exc) or ("server_error", AGENT_FAILED)
    return HostedRunResult.failure(message, code=code, detail=f"{type(exc).__name__}: {exc}")


CANCELLED = HostedRunResult(status=Run.Status.CANCELLED, messages=[])


def _too_slow(run: Run) -> HostedRunResult:
    logger.error("run %s: the target took over %s s", run.public_id, settings.AFHOST_RUN_TIMEOUT)
    return HostedRunResult.failure(
        TOO_SLOW, detail=f"stopped after AFHOST_RUN_TIMEOUT={settings.AFHOST_RUN_TIMEOUT} s"
    )


async def invoke(*, run: Run, messages: list[Message]) -> HostedRunResult:
    """Run the target to completion; a failure becomes a failed result, never an exception."""
    try:
        async with asyncio.timeout(settings.AFHOST_RUN_TIMEOUT):
            response = await _call_target(run, messages, stream=False)
    except TimeoutError:
        return _too_slow(run)
    except Exception as exc:
        return _failure(run, exc)
    return HostedRunResult.from_response(response)


class TargetStream:
    """Iterating it streams the target's updates; afterwards `result` holds the outcome."""

    def __init__(self, *, run: Run, messages: list[Message]) -> None:
        self.run = run
        self.messages = messages
        self.result: HostedRunResult | None = None

    async def __aiter__(self) -> AsyncIterator[AgentResponseUpdate]:
        deadline = asyncio.get_running_loop().time() + settings.AFHOST_RUN_TIMEOUT
        try:
            stream = _call_target(self.run, self.messages, stream=True)
            updates, appends = aiter(stream), TextAppends()
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        update = await anext(updates)
                except StopAsyncIteration:
                    break
                yield appends(update)
            self.result = HostedRunResult.from_response(await stream.get_final_response())
        except TimeoutError:
            self.result = _too_slow(self.run)
        except Exception as exc:
            self.result = _failure(self.run, exc)


async def wait_for_turn(begin: Callable[[], T]) -> T:
    """Call `begin` (a sync service, on the database thread) until its conversation is free.

    Waiting holds no thread and no connection: it sleeps between looks.
    """
    while True:
        try:
            return await db_call(begin)()
        except ConversationBusy:
            await asyncio.sleep(CONVERSATION_WAIT)


async def run_blocking(started: StartedRun) -> Run:
    """A run without streaming: run, store, return the finished row.

    A run not stored yet (a foreground API run) is inserted as it starts, by the run writer.
    If the caller goes away meanwhile, the run is stored as cancelled.
    """
    run = started.run
    writes = run.pk is None
    # A workflow's checkpoints refer to its run: the run is stored before the workflow starts.
    stored_first = writes and hosts_workflow()
    if writes and not stored_first:
        run_writer.start(started)
    try:
        try:
            if stored_first:
                await run_writer.start_visibly(started)
            result = await invoke(run=run, messages=started.messages)
        except asyncio.CancelledError:
            await asyncio.shield(_finish(started, CANCELLED, [], writes=writes))
            logger.info("run %s: the caller went away; run cancelled", run.public_id)
            raise
        services.assign_message_ids(result.messages)
        output_items = get_channel(run.channel).render_output(result)
        await _finish(started, result, output_items, writes=writes)
    finally:
        started.let_go()
    return run


async def _finish(
    started: StartedRun, result: HostedRunResult, output_items: list[dict], *, writes: bool
) -> None:
    if writes:
        await run_writer.finish(started, result, output_items)
    else:
        await db_call(services.finish_run)(
            started=started, result=result, output_items=output_items
        )


async def stream_foreground_run(started: StartedRun) -> AsyncGenerator[list[dict], None]:
    """A foreground streamed run: yields batches of wire events; the run is stored (in progress)
    before the first, which names it, and finished before the last.

    If the client goes away mid-stream, the run is cancelled.
    """
    run = started.run
    renderer = get_streaming_channel(run.channel).renderer(run, next_sequence=0)
    finished = False
    await run_writer.start_visibly(started)
    try:
        yield renderer.start()
        stream = TargetStream(run=run, messages=started.messages)
        async for update in stream:
            if events := renderer.update(update):
                yield events
        events = renderer.finish(stream.result)  # type: ignore[arg-type]  # set once iterated
        await run_writer.finish(started, stream.result, renderer.output_items)  # type: ignore[arg-type]
        finished = True
        yield events
    finally:
        try:
            if not finished:
                await asyncio.shield(run_writer.finish(started, CANCELLED, renderer.output_items))
                logger.info("run %s: the client went away; run cancelled", run.public_id)
        finally:
            started.let_go()


async def run_background(run_id: int) -> None:
    """A worker's job for a queued background run: wait for its conversation, claim it, drive it."""
    started = await wait_for_turn(lambda: services.begin_background_run(run_id=run_id))
    if started is None:
        return
    try:
        await drive_background_run(started)
    finally:
        started.let_go()


async def drive_background_run(started: StartedRun) -> None:
    """Run a claimed background run: a streamed one storing its events as they come, any other
    as a blocking run is (no events rendered or stored).

    A cancel (seen by CancelWatch's polling) stops the target at once.
    """
    run = started.run
    work = _stream_and_store(started) if run.is_streamed else _run_and_render(started)
    outcome = await _unless_cancelled(run, work)
    if outcome is None:
        logger.info("run %s was cancelled while running", run.public_id)
        await db_call(services.end_cancelled_run)(started=started)
        return
    result, output_items, events = outcome
    await db_call(services.finish_run)(
        started=started, result=result, output_items=output_items, events=events
    )


Outcome = tuple[HostedRunResult, list[dict], list[dict]]


async def _run_and_render(started: StartedRun) -> Outcome:
    result = await invoke(run=started.run, messages=started.messages)
    services.assign_message_ids(result.messages)
    return result, get_channel(started.run.channel).render_output(result), []


async def _stream_and_store(started: StartedRun) -> Outcome:
    """Stream the run, storing its events (numbered on from those it stored before)."""
    run = started.run
    sequence = await db_call(next_event_sequence)(run=run)
    renderer = get_streaming_channel(run.channel).renderer(run, next_sequence=sequence)
    save = db_call(services.record_events)
    await save(run=run, events=renderer.resume())
    stream = TargetStream(run=run, messages=started.messages)
    async for update in stream:
        if events := renderer.update(update):
            await save(run=run, events=events)
    result = stream.result
    events = renderer.finish(result)  # type: ignore[arg-type]  # set once iterated
    return result, renderer.output_items, events  # type: ignore[return-value]


async def _unless_cancelled(run: Run, work: Coroutine[Any, Any, T]) -> T | None:
    """What `work` returns, or None if the run's client cancelled it first (it is stopped)."""
    task = asyncio.ensure_future(work)
    cancelled = asyncio.ensure_future(_cancels().wait(run.pk))
    try:
        await asyncio.wait({task, cancelled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancelled.cancel()
        if not task.done():  # cancelled by its client, or the job itself was (a stopping worker)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()


class CancelWatch:
    """Tells the background runs an event loop drives when their client cancels them: one query
    per AFHOST_POLL_INTERVAL for all of them, not one per run."""

    def __init__(self) -> None:
        self._waiting: dict[int, asyncio.Future] = {}
        self._polling: asyncio.Task | None = None

    async def wait(self, run_pk: int) -> None:
        """Return once the run is cancelled (cancel this wait when the run ends)."""
        future = self._waiting[run_pk] = asyncio.get_running_loop().create_future()
        if self._polling is None or self._polling.done():
            self._polling = asyncio.ensure_future(self._poll())
        try:
            await future
        finally:
            self._waiting.pop(run_pk, None)

    async def _poll(self) -> None:
        while self._waiting:
            await asyncio.sleep(settings.AFHOST_POLL_INTERVAL)
            for pk in await _cancelled_among(list(self._waiting)):
                if (future := self._waiting.get(pk)) is not None and not future.done():
                    future.set_result(None)


@db_call
def _cancelled_among(run_pks: list[int]) -> list[int]:
    cancelled = Run.objects.filter(pk__in=run_pks, status=Run.Status.CANCELLED)
    return list(cancelled.values_list("pk", flat=True))


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CancelWatch] = (
    weakref.WeakKeyDictionary()
)


def _cancels() -> CancelWatch:
    return _watches.setdefault(asyncio.get_running_loop(), CancelWatch())


def tail_run_events(*, run: Run, after: int) -> AsyncGenerator[list[dict], None]:
    """Stored events of a streamed background run after `after`, following the run to its end."""
    return run_tails.follow(run=run, after=after)
