"""Use cases of the host core that write: starting, finishing, cancelling and deleting runs."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent_framework import Message
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_q.tasks import async_task

from afhost.exceptions import InvalidRunState, RunNotFound
from afhost.models import ApiKey, Conversation, Run, RunEvent
from afhost.registry import get_channel
from afhost.selectors import conversation_history, next_event_sequence
from afhost.types import ChannelRequest, HostedRunResult

logger = logging.getLogger(__name__)

# How long a background run may wait in the queue before the sweeper hands it out again.
QUEUE_GRACE = timedelta(minutes=2)


def new_item_id(prefix: str) -> str:
    # Item ids name parts of a response; they grant nothing, so they need no secure randomness
    # (and each os.urandom call is a system call on the hot path).
    return f"{prefix}_{random.getrandbits(192):048x}"


def reset_conversation(*, channel: str, isolation_key: str, key: str) -> None:
    """Start the named conversation afresh: its next run sees no earlier history."""
    Conversation.objects.filter(channel=channel, isolation_key=isolation_key, key=key).update(
        head_run=None, updated_at=timezone.now()
    )


def assign_message_ids(messages: Iterable[Message]) -> None:
    for message in messages:
        message.message_id = message.message_id or new_item_id("msg")


def _message_dicts(messages: list[Message]) -> list[dict]:
    assign_message_ids(messages)
    return [message.to_dict() for message in messages]


@dataclass(frozen=True, slots=True)
class StartedRun:
    run: Run
    # What the target is given: the conversation so far, then the new input.
    messages: list[Message]


def _new_run(request: ChannelRequest) -> tuple[Run, list[Message]]:
    """An unsaved run for `request` and the history it continues (checked for the caller)."""
    isolation_key = request.isolation_key
    previous, conversation = None, None
    if request.previous_run_id is not None:
        previous = (
            Run.objects.visible_to(isolation_key).filter(public_id=request.previous_run_id).first()
        )
        if previous is None:
            raise RunNotFound("previous run not found", param="previous_response_id")
        if previous.status in Run.ACTIVE_STATUSES:
            raise InvalidRunState("previous run still in progress", param="previous_response_id")
    elif request.conversation_key is not None:
        conversation, _ = Conversation.objects.get_or_create(
            channel=request.channel, isolation_key=isolation_key, key=request.conversation_key
        )
        previous = conversation.head_run
    run = Run(
        channel=request.channel,
        isolation_key=isolation_key,
        conversation=conversation,
        previous_run=previous,
        status=Run.Status.QUEUED if request.background else Run.Status.IN_PROGRESS,
        is_background=request.background,
        is_streamed=request.stream,
        is_stored=request.store,
        model=request.model,
        instructions=request.instructions,
        options=dict(request.options),
        metadata=dict(request.metadata),
        attributes=dict(request.attributes),
        input_messages=_message_dicts(request.input),
    )
    return run, conversation_history(run=previous)


def _advance_conversation(run: Run) -> None:
    if run.conversation_id is not None:
        Conversation.objects.filter(pk=run.conversation_id).update(
            head_run=run, updated_at=timezone.now()
        )


@transaction.atomic
def start_run(*, request: ChannelRequest) -> StartedRun:
    """Record a new run now, continuing its conversation; background runs are also queued."""
    run, history = _new_run(request)
    if request.background:
        run.enqueued_at = run.created_at
    run.save(force_insert=True)
    _advance_conversation(run)
    if request.background:
        if request.stream:
            record_events(
                run=run, events=get_channel(run.channel).renderer(run, next_sequence=0).start()
            )
        transaction.on_commit(lambda: _queue(run))
    return StartedRun(run=run, messages=[*history, *request.input])


def prepare_run(*, request: ChannelRequest) -> StartedRun:
    """A foreground run, stored only when it ends (see store_finished_runs).

    Until then nobody can see it: its id reaches the client with the finished response, or the
    first event of a stream; a stream the client leaves is stored as cancelled.
    """
    run, history = _new_run(request)
    return StartedRun(run=run, messages=[*history, *request.input])


def _queue(run: Run) -> None:
    async_task(
        "afhost.tasks.execute_run",
        run.pk,
        q_options={"task_name": f"run-{run.public_id}", "group": "runs"},
    )


def enqueue_run(*, run: Run) -> None:
    """Hand a queued background run to the workers again once the transaction commits."""
    run.mark_enqueued()
    transaction.on_commit(lambda: _queue(run))


def sweep_runs(*, now: datetime | None = None) -> tuple[int, int]:
    """Recover background runs the queue lost: re-enqueue long-queued runs, fail long-running ones.

    Runs only when a task went missing (a worker killed mid-run, a task the broker dropped), so
    nothing accepted waits forever. Re-enqueueing is safe: a run is claimed at most once.
    Returns (re-enqueued, failed).
    """
    now = now or timezone.now()
    requeued = 0
    for run in Run.objects.filter(
        is_background=True, status=Run.Status.QUEUED, enqueued_at__lt=now - QUEUE_GRACE
    ).order_by("pk"):
        with transaction.atomic():
            enqueue_run(run=run)
        requeued += 1
    lost_before = now - timedelta(seconds=settings.AFHOST_RUN_TIMEOUT) - QUEUE_GRACE
    failed = 0
    for run in Run.objects.filter(
        is_background=True, status=Run.Status.IN_PROGRESS, started_at__lt=lost_before
    ).order_by("pk"):
        failed += _fail_interrupted_run(run)
    if requeued or failed:
        logger.warning(
            "sweep: re-enqueued %d queued run(s), failed %d lost run(s)", requeued, failed
        )
    return requeued, failed


def record_events(*, run: Run, events: list[dict]) -> None:
    RunEvent.objects.bulk_create(
        RunEvent(run=run, sequence_number=event["sequence_number"], data=event) for event in events
    )


@transaction.atomic
def finish_run(
    *, run: Run, result: HostedRunResult, output_items: list[dict], events: list[dict] = ()
) -> bool:
    """Store the outcome of a stored run (and, for stored streams, its last events).

    Returns False, storing nothing, if the run was cancelled meanwhile.
    """
    finished = run.finish(run_outcome(result=result, output_items=output_items))
    if finished and events:
        record_events(run=run, events=events)
    return finished


@transaction.atomic
def store_finished_runs(*, finished: Sequence[tuple[Run, HostedRunResult, list[dict]]]) -> None:
    """Insert prepared foreground runs with their outcomes (one statement for all of them), and
    move their conversations on."""
    for run, result, output_items in finished:
        for name, value in run_outcome(result=result, output_items=output_items).items():
            setattr(run, name, value)
    runs = Run.objects.bulk_create([run for run, _, _ in finished])
    for run in runs:
        _advance_conversation(run)


def run_outcome(*, result: HostedRunResult, output_items: list[dict]) -> dict:
    """The fields a finished run stores."""
    if result.status not in Run.TERMINAL_STATUSES:
        raise ValueError(f"{result.status!r} is not a terminal status")
    now = timezone.now()
    return {
        "status": result.status,
        "output_messages": _message_dicts(result.messages),
        "output_items": output_items,
        "finish_reason": result.finish_reason,
        "usage": dict(result.usage) if result.usage else None,
        "error": dict(result.error) if result.error else None,
        "error_detail": result.error_detail,
        "completed_at": now,
        "updated_at": now,
    }


def cancel_run(*, run: Run) -> Run:
    """Cancel a queued or in-progress background run. Cancelling twice is harmless."""
    if not run.is_background:
        raise InvalidRunState("synchronous")
    if run.status != Run.Status.CANCELLED and not run.cancel():
        run.refresh_from_db()
        if run.status != Run.Status.CANCELLED:
            raise InvalidRunState(run.status)
    return run


def delete_run(*, run: Run) -> None:
    if run.status in Run.ACTIVE_STATUSES:
        raise InvalidRunState("in_flight")
    run.delete()


def execute_background_run(*, run_id: int) -> None:
    """Run a queued background run to its end. Safe to call again for the same run."""
    from afhost import execution  # the async half; imported here to keep this module sync-only

    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        logger.info("run %s was deleted before it started", run_id)
        return
    if run.status == Run.Status.IN_PROGRESS:
        # A second task for a run another worker is running (the sweeper re-enqueued it while
        # its first task waited in a backlog) leaves it alone. Past the run timeout, only a
        # redelivery of a task whose worker died finds it here.
        lost_before = timezone.now() - timedelta(seconds=settings.AFHOST_RUN_TIMEOUT)
        if run.started_at is not None and run.started_at < lost_before:
            _fail_interrupted_run(run)
        else:
            logger.info("run %s is already running elsewhere: nothing to do", run.public_id)
        return
    if not run.claim():
        logger.info("run %s is %s, not queued: nothing to do", run.public_id, run.status)
        return
    async_to_sync(execution.drive_background_run)(run=run, messages=conversation_history(run=run))


def _fail_interrupted_run(run: Run) -> bool:
    result = HostedRunResult.failure(
        "The run was interrupted before it finished.", detail="worker lost"
    )
    renderer = get_channel(run.channel).renderer(run, next_sequence=next_event_sequence(run=run))
    events = renderer.finish(result)
    streamed = events if run.is_streamed else []
    failed = finish_run(run=run, result=result, output_items=[], events=streamed)
    if failed:
        logger.error("run %s was interrupted (its worker died) and is marked failed", run.public_id)
    return failed


@transaction.atomic
def create_api_key(*, name: str, is_trusted: bool = False) -> tuple[ApiKey, str]:
    """Create a key; the raw key is returned once and never stored."""
    raw_key = ApiKey.generate_raw_key()
    api_key = ApiKey(name=name, is_trusted=is_trusted)
    api_key.set_key(raw_key)
    api_key.save()
    return api_key, raw_key


def revoke_api_keys(*, api_keys: Iterable[ApiKey]) -> int:
    return sum(api_key.revoke() for api_key in api_keys)
