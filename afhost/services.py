"""Use cases of the host core that write: starting, finishing, cancelling and deleting runs."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agent_framework import Message
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone
from django_q.tasks import async_task

from afhost.db import insert_rows, unique_or_none
from afhost.exceptions import ConversationBusy, HistoryTooLong, InvalidRunState, RunNotFound
from afhost.leases import give_back, keeper, lease_duration, take_lease
from afhost.models import ApiKey, Conversation, Run, RunCheckpoint, RunEvent
from afhost.queueing import queue_stored
from afhost.registry import channels_resuming_lost_runs, finish_hooks, get_streaming_channel
from afhost.selectors import conversation_history, next_event_sequence
from afhost.types import ChannelRequest, HostedRunResult, new_item_id

logger = logging.getLogger(__name__)

# How long a background run may wait in the queue before the sweeper hands it out again.
QUEUE_GRACE = timedelta(minutes=2)
# OpenAI's words for an input over the context window.
HISTORY_TOO_LONG = (
    "Your input exceeds the context window of this model. Please adjust your input and try again."
)


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


@dataclass(eq=False)
class StartedRun:
    """A run under way, with what its target is given, and the leases its turn holds.

    The leases are renewed while this object lives: one a crashed request or job dropped
    without giving them back runs out on its own.
    """

    run: Run
    # The conversation so far, then the new input.
    messages: list[Message]
    # The lease on the run's conversation, held from reading its head to moving it on.
    conversation_lease: str = ""

    def let_go(self) -> None:
        """Stop renewing the turn's leases: called when it ends, however it ends. Leases a turn
        that failed (the database gone mid-turn) could not give back run out, and its run is
        then failed by the sweeper, or run again by its channel, instead of staying held by a
        live process."""
        if self.run.pk is not None and self.run.lease_owner:
            keeper.forget(Run, self.run.pk, self.run.lease_owner)
        if self.conversation_lease and self.run.conversation_id:
            keeper.forget(Conversation, self.run.conversation_id, self.conversation_lease)


@dataclass(frozen=True, slots=True)
class _Continuation:
    previous: Run | None = None
    conversation: Conversation | None = None
    lease: str = ""


def _continuation(request: ChannelRequest) -> _Continuation:
    """What a new turn continues: a previous run (checked for the caller), or the head of its
    conversation, whose lease the turn then holds. A conversation another turn is in raises
    ConversationBusy; previous_response_id branches need no lease."""
    if request.previous_run_id is not None:
        previous = unique_or_none(
            Run.objects.visible_to(request.isolation_key).filter(public_id=request.previous_run_id)
        )
        if previous is None:
            raise RunNotFound("previous run not found", param="previous_response_id")
        if previous.status in Run.ACTIVE_STATUSES:
            raise InvalidRunState("previous run still in progress", param="previous_response_id")
        return _Continuation(previous=previous)
    if request.conversation_key is None:
        return _Continuation()
    lookup = {
        "channel": request.channel,
        "isolation_key": request.isolation_key,
        "key": request.conversation_key,
    }
    conversation = unique_or_none(_with_head(Conversation.objects.filter(**lookup)))
    if conversation is None:
        try:
            return _new_conversation(**lookup)
        except IntegrityError:  # another turn began it meanwhile, and holds it or held it
            conversation = _with_head(Conversation.objects.filter(**lookup)).get()
    return _lease_conversation(conversation)


_CONVERSATION_FIELDS = tuple(field.name for field in Conversation._meta.concrete_fields)
_RUN_FIELDS = tuple(field.name for field in Run._meta.concrete_fields)


def _with_head(conversations: QuerySet[Conversation]) -> QuerySet[Conversation]:
    """Conversations read with their head run's id as a Run (its messages are read with the
    history, within its budget)."""
    return conversations.select_related("head_run").only(*_CONVERSATION_FIELDS, "head_run__id")


def _with_continuation(runs: QuerySet[Run]) -> QuerySet[Run]:
    """Runs read with their conversation and their previous run's id as a Run (what a queued
    run continues)."""
    return runs.select_related("conversation", "previous_run").only(
        *_RUN_FIELDS,
        *(f"conversation__{name}" for name in _CONVERSATION_FIELDS),
        "previous_run__id",
    )


def _new_conversation(**lookup: str) -> _Continuation:
    """A conversation's first turn: it is created already leased, with no head to read."""
    lease = secrets.token_hex(8)
    with transaction.atomic():
        conversation = Conversation.objects.create(
            **lookup, lease_owner=lease, lease_expires_at=timezone.now() + lease_duration()
        )
    keeper.hold(Conversation, conversation.pk, lease)
    return _Continuation(conversation=conversation, lease=lease)


def _conversation(channel: str, isolation_key: str, key: str) -> Conversation:
    conversation, _ = Conversation.objects.get_or_create(
        channel=channel, isolation_key=isolation_key, key=key
    )
    return conversation


def _lease_conversation(conversation: Conversation) -> _Continuation:
    """Lease the conversation if its head is still the one read: a turn that moved it since
    held the lease then, and a turn that finds it busy waits or is refused as usual."""
    lease = take_lease(Conversation, conversation.pk, where=Q(head_run_id=conversation.head_run_id))
    if not lease:
        raise ConversationBusy("another turn is in this conversation", param="conversation")
    if Conversation.head_run.is_cached(conversation) or conversation.head_run_id is None:
        previous = conversation.head_run
    else:  # read with its run: the head's id, current as the lease says
        previous = Run.objects.only("pk").filter(pk=conversation.head_run_id).first()
    return _Continuation(previous=previous, conversation=conversation, lease=lease)


def _new_run(request: ChannelRequest, continuation: _Continuation, **fields) -> Run:
    return Run(
        channel=request.channel,
        isolation_key=request.isolation_key,
        conversation=continuation.conversation,
        previous_run=continuation.previous,
        is_background=request.background,
        is_streamed=request.stream,
        is_stored=request.store,
        model=request.model,
        instructions=request.instructions,
        options=dict(request.options),
        metadata=dict(request.metadata),
        attributes=dict(request.attributes),
        invocation_id=request.invocation_id,
        input_messages=_message_dicts(request.input),
        truncation=request.truncation,
        response_target=None
        if request.response_target.is_default
        else {
            **request.response_target.as_dict(),
            "from": {"channel": request.identity.channel, "native_id": request.identity.native_id},
        },
        **fields,
    )


def _in_progress(run_lease: str) -> dict:
    now = timezone.now()
    return {
        "status": Run.Status.IN_PROGRESS,
        "started_at": now,
        "lease_owner": run_lease,
        "lease_expires_at": now + lease_duration(),
    }


def _started(run: Run, continuation: _Continuation, new_input: list[Message]) -> StartedRun:
    started = StartedRun(
        run=run,
        messages=[
            *conversation_history(run=continuation.previous, truncation=run.truncation),
            *new_input,
        ],
        conversation_lease=continuation.lease,
    )
    if continuation.lease and continuation.conversation:
        keeper.hold(Conversation, continuation.conversation.pk, continuation.lease, started)
    return started


def prepare_run(*, request: ChannelRequest) -> StartedRun:
    """A foreground run, not stored yet: the run writer inserts it as it starts (run_writer)."""
    continuation = _continuation(request)
    try:
        run = _new_run(request, continuation, **_in_progress(secrets.token_hex(8)))
        return _started(run, continuation, request.input)
    except BaseException:
        release_conversation(conversation=continuation.conversation, lease=continuation.lease)
        raise


@transaction.atomic
def start_run(*, request: ChannelRequest, link: Callable[[Run], None] | None = None) -> StartedRun:
    """Store a new run as in progress now, under this process's lease, and `link` it to what
    asked for it (e.g. a Telegram update) in the same transaction."""
    continuation = _continuation(request)
    run = _new_run(request, continuation, **_in_progress(secrets.token_hex(8)))
    run.save(force_insert=True)
    if link is not None:
        link(run)
    started = _started(run, continuation, request.input)
    transaction.on_commit(lambda: keeper.hold(Run, run.pk, run.lease_owner, started))
    return started


@transaction.atomic
def queue_run(*, request: ChannelRequest) -> Run:
    """Store a background run as queued and hand it to the workers (afhost.queueing).

    A run in a named conversation reads its history when a worker starts it, after the turns
    before it have ended; one after a previous response continues from that response.
    """
    if request.previous_run_id is not None:
        continuation = _continuation(request)
    elif request.conversation_key is not None:
        continuation = _Continuation(
            conversation=_conversation(
                request.channel, request.isolation_key, request.conversation_key
            )
        )
    else:
        continuation = _Continuation()
    run = _new_run(request, continuation, status=Run.Status.QUEUED)
    run.enqueued_at = run.created_at
    run.save(force_insert=True)
    if request.stream:
        record_events(
            run=run,
            events=get_streaming_channel(run.channel).renderer(run, next_sequence=0).start(),
        )
    _queue_stored(run)
    return run


def begin_background_run(*, run_id: int) -> StartedRun | None:
    """Start a queued background run in this worker: take its conversation's lease, then the
    run's own. None if there is nothing to do (gone, cancelled, or running elsewhere); raises
    ConversationBusy while another turn is in its conversation."""
    try:
        run = _with_continuation(Run.objects.filter(pk=run_id)).get()
    except Run.DoesNotExist:
        return None
    if run.status != Run.Status.QUEUED:
        return None
    continuation = _Continuation(previous=run.previous_run)
    if run.conversation is not None:
        continuation = _lease_conversation(run.conversation)
    now = timezone.now()
    run_lease = take_lease(
        Run,
        run.pk,
        where=Q(status=Run.Status.QUEUED),
        status=Run.Status.IN_PROGRESS,
        started_at=now,
        previous_run=continuation.previous,
    )
    if not run_lease:
        release_conversation(conversation=run.conversation, lease=continuation.lease)
        return None
    # As the UPDATE left it (within its clock's microseconds), without reading the row again.
    run.status, run.started_at, run.previous_run = (
        Run.Status.IN_PROGRESS,
        now,
        continuation.previous,
    )
    run.lease_owner, run.lease_expires_at = run_lease, now + lease_duration()
    return _started_or_failed(run, continuation)


def _started_or_failed(run: Run, continuation: _Continuation) -> StartedRun | None:
    """A claimed run, started; or None, failed, if its history is over the budget and it may
    not truncate it (its conversation does not move on)."""
    try:
        return _started(run, continuation, [Message.from_dict(m) for m in run.input_messages])
    except HistoryTooLong as exc:
        release_conversation(conversation=continuation.conversation, lease=continuation.lease)
        result = HostedRunResult.failure(
            HISTORY_TOO_LONG, detail=exc.message, code="invalid_prompt"
        )
        events = []
        if run.is_streamed:
            renderer = get_streaming_channel(run.channel).renderer(
                run, next_sequence=next_event_sequence(run=run)
            )
            events = renderer.finish(result)
        finish_run(
            started=StartedRun(run=run, messages=[]), result=result, output_items=[], events=events
        )
        logger.info("run %s failed: %s", run.public_id, exc.message)
        return None


def resume_run(*, run: Run) -> StartedRun | None:
    """Take over an in-progress run whose process died (its lease ran out), to run it again
    from its conversation's current head. None if another process holds or ended it; raises
    ConversationBusy while another turn is in its conversation."""
    continuation = _Continuation(previous=run.previous_run)
    if run.conversation is not None:
        continuation = _lease_conversation(run.conversation)
    run_lease = take_lease(
        Run, run.pk, where=Q(status=Run.Status.IN_PROGRESS), previous_run=continuation.previous
    )
    if not run_lease:
        release_conversation(conversation=run.conversation, lease=continuation.lease)
        return None
    run.refresh_from_db()
    return _started_or_failed(run, continuation)


def release_conversation(*, conversation: Conversation | None, lease: str) -> None:
    """Give a conversation's lease back without moving it on (the turn stored nothing)."""
    if conversation is not None and lease:
        give_back(Conversation, conversation.pk, lease)


def _queue(run: Run) -> None:
    async_task(
        "afhost.tasks.execute_run",
        run.pk,
        q_options={"task_name": f"run-{run.public_id}", "group": "runs"},
    )


def _queue_stored(run: Run) -> None:
    queue_stored(
        lambda: _queue(run),
        what=f"run {run.public_id}",
        recovery=f"the sweeper queues it again after {QUEUE_GRACE.total_seconds():.0f} s",
    )


def enqueue_run(*, run: Run) -> None:
    """Hand a queued background run to the workers again (afhost.queueing)."""
    run.mark_enqueued()
    _queue_stored(run)


def sweep_runs(*, now: datetime | None = None) -> tuple[int, int]:
    """Recover runs their process or the queue lost: re-enqueue long-queued background runs, and
    fail in-progress runs whose lease ran out (their process died mid-turn), but for those of
    channels that run them again, and background workflow runs that can resume (queued again).

    Safe in many processes at once: a run is claimed at most once, and failing one first takes
    its expired lease. Returns (re-enqueued, failed).
    """
    now = now or timezone.now()
    requeued = 0
    for run in Run.objects.filter(
        is_background=True, status=Run.Status.QUEUED, enqueued_at__lt=now - QUEUE_GRACE
    ).order_by("pk"):
        with transaction.atomic():
            enqueue_run(run=run)
        requeued += 1
    lost = Run.objects.filter(status=Run.Status.IN_PROGRESS, lease_expires_at__lt=now).exclude(
        channel__in=channels_resuming_lost_runs()
    )
    # A background workflow run that checkpointed since it (last) started resumes from there;
    # one that made no progress since is failed, lest a run that kills its worker loop forever,
    # and so is a streamed one: the events it stored cannot be taken back.
    progressed = RunCheckpoint.objects.filter(
        run=OuterRef("pk"), created_at__gte=OuterRef("started_at")
    )
    failed = 0
    for run in lost.annotate(resumable=Exists(progressed)).order_by("pk"):
        if run.is_background and run.resumable and not run.is_streamed:  # type: ignore[attr-defined]
            requeued += requeue_lost_run(run=run)
        else:
            failed += fail_lost_run(run=run)
    if requeued or failed:
        logger.warning(
            "sweep: re-enqueued %d queued run(s), failed %d lost run(s)", requeued, failed
        )
    return requeued, failed


def requeue_lost_run(*, run: Run) -> bool:
    """Queue an in-progress background run whose process died again, for a worker to resume
    (a workflow's, from its latest checkpoint); False if it is alive or ended after all."""
    lease = take_lease(Run, run.pk, where=Q(status=Run.Status.IN_PROGRESS))
    if not lease:
        return False
    with transaction.atomic():
        if give_back(Run, run.pk, lease, status=Run.Status.QUEUED):
            enqueue_run(run=run)
            logger.warning(
                "run %s was interrupted (its process died) and is queued again", run.public_id
            )
            return True
    return False


def fail_lost_run(*, run: Run) -> bool:
    """Fail an in-progress run whose process died; False if it is alive or ended after all."""
    lease = take_lease(Run, run.pk, where=Q(status=Run.Status.IN_PROGRESS))
    if not lease:
        return False
    run.lease_owner = lease
    result = HostedRunResult.failure(
        "The run was interrupted before it finished.", detail="its process stopped (lease expired)"
    )
    events = []
    if run.is_streamed:
        channel = get_streaming_channel(run.channel)
        events = channel.renderer(run, next_sequence=next_event_sequence(run=run)).finish(result)
    # Not part of its conversation: the turn never ended, so the conversation did not move on.
    failed = finish_run(
        started=StartedRun(run=run, messages=[]), result=result, output_items=[], events=events
    )
    if failed:
        logger.error(
            "run %s was interrupted (its process died) and is marked failed", run.public_id
        )
    return failed


def record_events(*, run: Run, events: list[dict]) -> None:
    RunEvent.objects.bulk_create(
        RunEvent(run=run, sequence_number=event["sequence_number"], data=event) for event in events
    )


@transaction.atomic
def finish_run(
    *,
    started: StartedRun,
    result: HostedRunResult,
    output_items: list[dict],
    events: Sequence[dict] = (),
) -> bool:
    """Store the outcome of a stored in-progress run (and, for stored streams, its last events),
    give its lease back, and move its conversation on to it.

    Returns False, storing nothing, if the run was cancelled meanwhile or its lease was lost.
    """
    run = started.run
    outcome = run_outcome(result=result, output_items=output_items)
    finished = give_back(
        Run, run.pk, run.lease_owner, where=Q(status=Run.Status.IN_PROGRESS), **outcome
    )
    if finished:
        for name, value in outcome.items():
            setattr(run, name, value)
        if events:
            record_events(run=run, events=list(events))
        for hook in finish_hooks():
            hook(run)
    run.lease_owner, run.lease_expires_at = "", None
    _end_turn(started, moved_on=finished)
    return finished


@transaction.atomic
def end_cancelled_run(*, started: StartedRun) -> None:
    """Give back the leases of a run that was cancelled while it ran; its conversation does not
    move on."""
    give_back(Run, started.run.pk, started.run.lease_owner)
    _end_turn(started, moved_on=False)


def _end_turn(started: StartedRun, *, moved_on: bool) -> None:
    """Give the conversation's lease back, moving it on to the run if the run was stored."""
    run = started.run
    if not started.conversation_lease or not run.conversation_id:
        return
    changes: dict[str, Any] = {"head_run": run} if moved_on else {}
    if not give_back(Conversation, run.conversation_id, started.conversation_lease, **changes):
        logger.warning(
            "run %s: the lease on conversation %s ran out before the turn ended",
            run.public_id,
            run.conversation_id,
        )


@transaction.atomic
def store_runs(
    *,
    started: Sequence[StartedRun],
    finished: Sequence[tuple[StartedRun, HostedRunResult, list[dict]]],
) -> None:
    """The run writer's batch: insert runs that started (one statement for all, finished ones
    with their outcome), and finish those it had inserted before."""
    inserted_finished = [entry for entry in finished if entry[0].run.pk is None]
    later = [entry for entry in finished if entry[0].run.pk is not None]
    for entry, result, output_items in inserted_finished:
        for name, value in run_outcome(result=result, output_items=output_items).items():
            setattr(entry.run, name, value)
        entry.run.lease_owner, entry.run.lease_expires_at = "", None
    insert_rows([entry.run for entry in started] + [entry.run for entry, _, _ in inserted_finished])
    for entry, _, _ in inserted_finished:
        _end_turn(entry, moved_on=True)
    for entry, result, output_items in later:
        finish_run(started=entry, result=result, output_items=output_items)

    def hold_leases() -> None:
        for entry in started:
            keeper.hold(Run, entry.run.pk, entry.run.lease_owner, entry)

    transaction.on_commit(hold_leases)


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


@transaction.atomic
def create_api_key(
    *, name: str, is_trusted: bool = False, partition: str = ""
) -> tuple[ApiKey, str]:
    """Create a key; the raw key is returned once and never stored.

    `partition` names a partition shared with other keys; blank gives the key its own. Raises
    ValidationError for an invalid name or partition.
    """
    raw_key = ApiKey.generate_raw_key()
    api_key = ApiKey(name=name, is_trusted=is_trusted, partition=partition)
    api_key.set_key(raw_key)
    api_key.full_clean()
    api_key.save()
    return api_key, raw_key


def revoke_api_keys(*, api_keys: Iterable[ApiKey]) -> int:
    return sum(api_key.revoke() for api_key in api_keys)
