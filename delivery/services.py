"""Durable pushes of a run's answer to other channels (a run's ResponseTarget).

When a run with pushes ends (`schedule_deliveries`, in the transaction that stores its end), one
DeliveryTask per destination and phase is created and its id queued with it (afhost.queueing).
A worker claims a task with a conditional UPDATE under a lease (`push_delivery`), checks that the
destination may still be reached (link, block, policy), pushes through the channel, and records
the attempt:
sent; retried later with exponential backoff and jitter (network, 5xx, 429 as long as asked);
or failed for good with a readable reason. A group that moved to a supergroup is followed.

At most once per phase and destination: the idempotency key allows one task per phase and
destination, a task is claimed (one UPDATE) right before its push and marked sent right after,
and each part of a long message is recorded as the channel accepts it. What remains is the push
in flight: a worker that dies between handing a part to the channel and recording it leaves the
task interrupted (the part may have arrived), and it is not sent again on its own; an operator
sees it, with that explanation, and may retry it. So does a part Telegram took but did not
answer in time. A worker that stalled past its lease and then hears that the push went through
records the interrupted task sent after all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agent_framework import Message
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, QuerySet
from django.utils import timezone
from django_q.tasks import async_task

from afhost.db import db_call
from afhost.exceptions import PushError
from afhost.leases import free, give_back, keeper, lease_duration
from afhost.models import Run
from afhost.queueing import queue_stored
from afhost.registry import pushing_channels
from afhost.types import ACTIVE, ALL_LINKED, NONE, ORIGINATING
from delivery.models import DeliveryAttempt, DeliveryTask
from linking import services as linking
from linking.models import Identity

logger = logging.getLogger(__name__)

# A retry sooner than this is awaited by the job that failed (a coroutine, holding nothing);
# a later one is handed out again by the sweeper.
WAIT_IN_JOB = 60.0
INTERRUPTED = (
    "The worker stopped while the channel was receiving this message: it may have arrived, so "
    "it was not sent again. Retry it if the person did not get it."
)


@dataclass(frozen=True, slots=True)
class Destination:
    channel: str
    locator: dict
    identity: Identity | None = None

    @property
    def key(self) -> str:
        return f"{self.channel}:" + ":".join(str(v) for v in self.locator.values() if v is not None)


# --- scheduling -------------------------------------------------------------------------------


def destinations(*, targets: Iterable[str], caller: Identity | None) -> list[Destination]:
    """Where the targets lead: explicit chats as named, the keywords and channel names through
    the identities linked to the caller (never anyone else's)."""
    channels = pushing_channels()
    linked: list[Identity] = []
    if caller is not None:
        person = linking.person_of(caller)
        linked = [each for each in person.identities if each.channel in channels and each != caller]
    found: dict[str, Destination] = {}

    def add(identity: Identity) -> None:
        locator = channels[identity.channel].identity_locator(identity.native_id)
        destination = Destination(identity.channel, locator, identity)
        found.setdefault(destination.key, destination)

    for target in targets:
        if target in (ORIGINATING, NONE):
            continue
        if target == ALL_LINKED:
            for identity in linked:
                add(identity)
        elif target == ACTIVE:
            seen = [each for each in linked if each.last_seen_at is not None]
            if seen:
                add(max(seen, key=lambda each: each.last_seen_at))  # type: ignore[arg-type,return-value]
        elif ":" in target:
            channel, _, value = target.partition(":")
            destination = Destination(channel, channels[channel].push_locator(value))
            found.setdefault(destination.key, destination)
        else:
            for identity in linked:
                if identity.channel == target:
                    add(identity)
    return list(found.values())


def _text(messages: list[dict], *, role: str = "assistant") -> str:
    texts = (Message.from_dict(data) for data in messages if data.get("role") == role)
    return "\n".join(message.text for message in texts if message.text)


def schedule_deliveries(run: Run) -> list[DeliveryTask]:
    """The pushes a run that just ended asks for (afhost's finish hook, in its transaction)."""
    spec = run.response_target
    if not spec or run.status not in (Run.Status.COMPLETED, Run.Status.INCOMPLETE):
        return []
    caller = None
    if any(target not in (ORIGINATING, NONE) and ":" not in target for target in spec["targets"]):
        caller = Identity.objects.filter(**spec["from"]).first()  # some go through its links
    found = destinations(targets=spec["targets"], caller=caller)
    answer = _text(run.output_messages)
    if not found or not answer:
        return []
    now = timezone.now()
    echo = _text(run.input_messages, role="user")
    # The run's end handled again (a hook run twice) adds nothing: one task per key, ever.
    existing = {task.idempotency_key: task for task in DeliveryTask.objects.filter(run=run)}
    tasks: list[DeliveryTask] = []
    for destination in found:
        phases = [DeliveryTask.Phase.ANSWER]
        if spec.get("echo_input") and echo:
            phases.insert(0, DeliveryTask.Phase.ECHO)
        before = None
        for phase in phases:
            key = f"{run.public_id}:{destination.key}:{phase}"
            if key in existing:
                before = existing[key]
                continue
            text = answer if phase == DeliveryTask.Phase.ANSWER else f"**You:** {echo}"
            before = DeliveryTask(
                run=run,
                channel=destination.channel,
                identity=destination.identity,
                locator=destination.locator,
                phase=phase,
                text=text,
                after=before,
                idempotency_key=key,
                max_attempts=settings.DELIVERY_MAX_ATTEMPTS,
                next_attempt_at=now,
            )
            tasks.append(before)
    for task in tasks:  # one by one, in order: an answer names the echo before it
        task.save(force_insert=True)
    enqueue(tasks)
    return tasks


def enqueue(tasks: Iterable[DeliveryTask]) -> None:
    """Queue the tasks' ids for the workers, with the transaction that stores them."""
    ids = [task.pk for task in tasks]
    _queue_stored(ids)


def _queue_stored(ids: list[int]) -> None:
    def queue_all() -> None:
        for pk in ids:
            _queue(pk)

    queue_stored(
        queue_all,
        what=f"{len(ids)} deliveries",
        recovery="the sweeper queues them again once they have been due for two leases",
    )


def _queue(pk: int) -> None:
    async_task("delivery.tasks.push_delivery", pk, q_options={"group": "delivery"})


# --- pushing ------------------------------------------------------------------------------------


def _claim(pk: int) -> tuple[DeliveryTask, str] | None:
    """Lease a due task whose echo (if any) has ended, as one attempt more; with the reason its
    destination may no longer be reached ("" when it may)."""
    now = timezone.now()
    owner = secrets.token_hex(8)
    at = connection.ops.adapt_datetimefield_value
    params = [
        *(owner, at(now + lease_duration()), at(now), DeliveryTask.Status.SENDING),
        *(pk, DeliveryTask.Status.PENDING, at(now), at(now), *DeliveryTask.TERMINAL),
    ]
    claimed = list(DeliveryTask.objects.raw(_CLAIM_SQL, params))
    if not claimed:
        return None
    keeper.hold(DeliveryTask, pk, owner)
    [task] = claimed
    if task.identity_id is not None:  # pushed through a person's link: is it still there?
        task = DeliveryTask.objects.select_related("run", "identity").only(*_PUSH_FIELDS).get(pk=pk)
    return task, _refusal(task)


def _claim_sql() -> str:
    # One statement that leases the task and returns it (the ORM's UPDATE returns a count, so
    # it took an UPDATE with a subquery and a SELECT: ~2 ms of a worker's ~5 ms a push).
    table = connection.ops.quote_name(DeliveryTask._meta.db_table)
    columns = ", ".join(
        connection.ops.quote_name(field.column) for field in DeliveryTask._meta.concrete_fields
    )
    terminal = ", ".join(["%s"] * len(DeliveryTask.TERMINAL))
    return f"""
        UPDATE {table}
        SET lease_owner = %s, lease_expires_at = %s, updated_at = %s, status = %s,
            attempts = attempts + 1
        WHERE id = %s AND status = %s AND next_attempt_at <= %s
            AND (lease_expires_at IS NULL OR lease_expires_at < %s)
            AND (after_id IS NULL OR EXISTS (
                SELECT 1 FROM {table} AS echo
                WHERE echo.id = {table}.after_id AND echo.status IN ({terminal})
            ))
        RETURNING {columns}
    """  # noqa: S608 (names from the model, values as parameters)


_CLAIM_SQL = _claim_sql()

# What a push through a person's link reads of its task and run (not the run's messages).
_PUSH_FIELDS = (
    *(field.name for field in DeliveryTask._meta.concrete_fields),
    "run__id",
    "run__response_target",
    "identity",
)


def _refusal(task: DeliveryTask) -> str:
    """Why the destination may no longer be reached, or "" (checked before each push)."""
    if task.identity_id is None:
        return ""
    identity = task.identity
    spec = task.run.response_target or {}
    caller = Identity.objects.filter(**spec.get("from", {})).first()
    person = None if caller is None else linking.person_of(caller)
    if person is None or identity not in person.identities:
        return "not delivered: the person's link to the caller was revoked"
    # The destination is one of the caller's person's identities: that person is decided.
    outcome = linking.decide(person=person, policy=linking.policy_for(identity.channel))
    if not isinstance(outcome, linking.Allowed):
        return f"not delivered: the {identity.channel} policy refuses {identity}: {outcome.reason}"
    return ""


def _backoff(task: DeliveryTask, error: PushError) -> float:
    if error.retry_after is not None:
        return error.retry_after
    base = settings.DELIVERY_BACKOFF * 2 ** (task.attempts - 1)
    return min(settings.DELIVERY_MAX_BACKOFF, base) * random.uniform(0.5, 1.5)  # noqa: S311


def _log_attempt(task: DeliveryTask, outcome: str, error: str = "") -> None:
    DeliveryAttempt.objects.create(
        task=task,
        number=task.attempts,
        started_at=task.updated_at,  # when it was claimed
        finished_at=timezone.now(),
        outcome=outcome,
        error=error,
    )


@transaction.atomic
def _record(task: DeliveryTask, *, error: PushError | None) -> float | None:
    """Store how the attempt ended; the seconds until the next one, or None when it is over."""
    now = timezone.now()
    if error is None:
        sent: dict[str, Any] = {
            "status": DeliveryTask.Status.SENT,
            "sent_at": now,
            "sent_parts": task.sent_parts,
            "last_error": "",
        }
        if give_back(DeliveryTask, task.pk, task.lease_owner, **sent):
            _log_attempt(task, DeliveryAttempt.Outcome.SENT)
        elif _sent_after_all(task, now=now, **sent):
            DeliveryAttempt.objects.filter(task=task, number=task.attempts).update(
                outcome=DeliveryAttempt.Outcome.SENT, error="", finished_at=now
            )
        return None
    changes: dict[str, Any] = {"last_error": error.message, "sent_parts": task.sent_parts}
    if error.moved_to is not None:
        changes.update(locator=error.moved_to, max_attempts=F("max_attempts") + 1)
        delay: float | None = 0.0
    elif error.permanent or task.attempts >= task.max_attempts:
        delay = None
    else:
        delay = _backoff(task, error)
    if delay is None:
        status, outcome = DeliveryTask.Status.FAILED, DeliveryAttempt.Outcome.FAILED
    else:
        status, outcome = DeliveryTask.Status.PENDING, DeliveryAttempt.Outcome.RETRY
        changes["next_attempt_at"] = now + timedelta(seconds=delay)
    if not give_back(DeliveryTask, task.pk, task.lease_owner, status=status, **changes):
        # The lease ran out meanwhile and the sweeper ended the task (and this attempt).
        logger.warning("delivery %s: lease lost before %s was recorded", task.pk, outcome)
        return None
    _log_attempt(task, outcome, error.message)
    if error.unreachable and task.identity is not None:
        task.identity.mark_unreachable(error.message)
    return delay


def _sent_after_all(task: DeliveryTask, *, now: datetime, **sent) -> bool:
    """Record as sent a task the sweeper gave up as interrupted (its worker stalled past the
    lease) during this very attempt: it did arrive, so nobody should send it again."""
    if DeliveryTask.objects.filter(
        free(now), pk=task.pk, status=DeliveryTask.Status.INTERRUPTED, attempts=task.attempts
    ).update(updated_at=now, **sent):
        logger.warning("delivery %s was sent after all (its lease ran out meanwhile)", task.pk)
        return True
    return False


class _Progress:
    """The parts of the task's message the channel accepted, recorded as they are."""

    def __init__(self, task: DeliveryTask) -> None:
        self.task = task

    @property
    def sent_parts(self) -> int:
        return self.task.sent_parts

    async def part_sent(self, *, last: bool) -> None:
        # Recorded at once, the first part too: a worker that dies before the next part is done
        # must not leave a retry to send this one again. The last is recorded with the end.
        self.task.sent_parts += 1
        if not last:
            await db_call(DeliveryTask.objects.filter(pk=self.task.pk).update)(
                sent_parts=self.task.sent_parts, updated_at=timezone.now()
            )


async def push_delivery(pk: int) -> None:
    """A worker's job for one task: push it (retrying soon failures in place), then push the
    answer that waited for it, if it was an echo."""
    todo = [pk]
    while todo:
        current = todo.pop(0)
        if await _push_until_settled(current) == DeliveryTask.Phase.ECHO:
            todo.extend(await db_call(_waiting_for)(current))


async def _push_until_settled(pk: int) -> str | None:
    """Attempt the task until it is over or due too late to wait for; its phase, or None if it
    was not ours to push."""
    attempted = await _attempt(pk)
    if attempted is None:
        return None
    phase, delay = attempted
    if delay is not None and delay <= WAIT_IN_JOB:
        await asyncio.sleep(delay)
        await _push_until_settled(pk)
    return phase


def _waiting_for(pk: int) -> list[int]:
    pending = DeliveryTask.objects.filter(after_id=pk, status=DeliveryTask.Status.PENDING)
    return list(pending.values_list("pk", flat=True))


async def _attempt(pk: int) -> tuple[str, float | None] | None:
    """One attempt at the task: its phase and the seconds until it is due again (None when it
    is over); None if it was not due, or claimed by another worker."""
    claimed = await db_call(_claim)(pk)
    if claimed is None:
        return None
    task, refusal = claimed
    channel = pushing_channels().get(task.channel)
    if channel is None or refusal:
        reason = refusal or f"no channel named {task.channel!r} can push"
        error: PushError | None = PushError(reason, permanent=True)
    else:
        try:
            await channel.push(task.locator, task.text, progress=_Progress(task))
            error = None
        except PushError as exc:
            logger.info("delivery %s attempt %d: %s", task.pk, task.attempts, exc.message)
            error = exc
        except Exception as exc:  # a bug or an unforeseen failure: retried, visibly
            logger.exception("delivery %s attempt %d failed", task.pk, task.attempts)
            error = PushError(f"{type(exc).__name__}: {exc}")
    return task.phase, await db_call(_record)(task, error=error)


# --- recovery and operators --------------------------------------------------------------------


def sweep_deliveries(*, now: datetime | None = None) -> tuple[int, int]:
    """Mark tasks whose worker died mid-push interrupted, and queue again due tasks nobody is
    working on (their queue task was lost, or their retry was too far off to wait for).

    Returns (interrupted, queued again).
    """
    now = now or timezone.now()
    lost = DeliveryTask.objects.filter(free(now), status=DeliveryTask.Status.SENDING)
    interrupted = 0
    for task in lost.only("pk", "attempts", "updated_at"):
        with transaction.atomic():
            if DeliveryTask.objects.filter(free(now), pk=task.pk, status="sending").update(
                status=DeliveryTask.Status.INTERRUPTED,
                last_error=INTERRUPTED,
                lease_owner="",
                lease_expires_at=None,
                updated_at=now,
            ):
                _log_attempt(task, DeliveryAttempt.Outcome.INTERRUPTED, INTERRUPTED)
                interrupted += 1
    # Due for a while: a queued task is left to its queue task, which a busy cluster may take
    # some time to reach (a second one would only find the task claimed).
    stale = now - timedelta(seconds=2 * settings.AFHOST_LEASE_SECONDS)
    due = list(
        DeliveryTask.objects.filter(
            status=DeliveryTask.Status.PENDING, next_attempt_at__lte=stale
        ).values_list("pk", flat=True)[:1000]
    )
    for pk in due:
        _queue(pk)
    return interrupted, len(due)


@transaction.atomic
def retry_deliveries(*, tasks: QuerySet[DeliveryTask]) -> int:
    """Send ended tasks again now, with a fresh budget of attempts (an operator's retry)."""
    now = timezone.now()
    chosen = list(
        tasks.filter(
            status__in=(
                DeliveryTask.Status.FAILED,
                DeliveryTask.Status.INTERRUPTED,
                DeliveryTask.Status.CANCELLED,
            )
        ).values_list("pk", flat=True)
    )
    DeliveryTask.objects.filter(pk__in=chosen).update(
        status=DeliveryTask.Status.PENDING,
        next_attempt_at=now,
        max_attempts=F("attempts") + settings.DELIVERY_MAX_ATTEMPTS,
        updated_at=now,
    )
    _queue_stored(chosen)
    return len(chosen)


def cancel_deliveries(*, tasks: QuerySet[DeliveryTask]) -> int:
    """Cancel the tasks not sent or being sent yet."""
    return tasks.filter(status=DeliveryTask.Status.PENDING).update(
        status=DeliveryTask.Status.CANCELLED, updated_at=timezone.now()
    )
