"""Reads for the delivery console: the admin's search, the dashboard's figures, the API's lists.

Every query here stays cheap with a million rows on PostgreSQL: the figures look only at the
deliveries scheduled in the last hour (the `created_at` indexes), the open work (pending,
sending) is counted up to a cap, and the lists are ordered by an indexed column and sliced.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, QuerySet
from django.db.models.functions import TruncMinute
from django.utils import timezone

from afhost.models import Run, parse_public_id
from delivery.models import DeliveryTask
from linking.models import Identity

WINDOW = timedelta(hours=1)
# A pending delivery whose next attempt is older than this is overdue (its worker is late).
OVERDUE_AFTER = timedelta(minutes=1)
# Open work is counted up to this many rows; more shows as "10000+".
COUNT_CAP = 10_000
LATEST_FAILURES = 10

_INTEGER = re.compile(r"-?\d+")


def with_run(queryset: QuerySet[DeliveryTask]) -> QuerySet[DeliveryTask]:
    """The deliveries with their run's identifying columns (not its messages), in one query.

    A select_related rather than an annotation: counts drop it, and so skip the join.
    """
    light = {"id", "public_id", "channel", "status"}
    heavy = [f"run__{field.name}" for field in Run._meta.concrete_fields if field.name not in light]
    return queryset.select_related("run").defer(*heavy)


def search_condition(term: str) -> Q:
    """What an operator's search term finds: a response (`resp_…` or the run's UUID), a person
    (their native id or @username on the channel), or a chat id in the destination.

    Each is an indexed lookup: a response or a person first, then its deliveries by their
    foreign key; a chat id through the index on the destination's chat id.
    """
    term = term.strip()
    public_id = parse_public_id(term)
    if public_id is not None:
        return Q(run__public_id=public_id)
    # Resolved first: a list of ids lets PostgreSQL weigh them (a subquery looks common).
    people = list(
        Identity.objects.filter(
            Q(native_id=term) | Q(username__iexact=term.removeprefix("@"))
        ).values_list("pk", flat=True)[:100]
    )
    found = Q(identity__in=people)
    if _INTEGER.fullmatch(term):
        found |= Q(locator__chat_id=int(term))
    return found


def list_deliveries(
    *, status: str = "", channel: str = "", phase: str = ""
) -> QuerySet[DeliveryTask]:
    """Deliveries, newest first (`created_at` indexes), without their text."""
    filters = {
        name: value
        for name, value in (("status", status), ("channel", channel), ("phase", phase))
        if value
    }
    queryset = DeliveryTask.objects.filter(**filters).select_related("identity").defer("text")
    return with_run(queryset).order_by("-created_at", "-pk")


def get_delivery(*, pk: int) -> DeliveryTask | None:
    """One delivery with its attempts (`attempt_log`, in order)."""
    queryset = with_run(DeliveryTask.objects.select_related("identity"))
    return queryset.prefetch_related("attempt_log").filter(pk=pk).first()


@dataclass(frozen=True, slots=True)
class Capped:
    """A count that stopped at COUNT_CAP."""

    count: int
    more: bool

    def __str__(self) -> str:
        return f"{self.count}+" if self.more else str(self.count)


def capped_count(queryset: QuerySet[DeliveryTask]) -> Capped:
    count = queryset.order_by()[: COUNT_CAP + 1].count()
    return Capped(min(count, COUNT_CAP), count > COUNT_CAP)


@dataclass(frozen=True, slots=True)
class Minute:
    start: datetime
    sent: int
    failed: int


@dataclass(frozen=True, slots=True)
class ChannelRow:
    channel: str
    cells: list[tuple[str, int]]  # (status, count) in DeliveryTask.Status order
    total: int


@dataclass(frozen=True)
class DeliveryStats:
    """How delivery does: the deliveries scheduled in the last hour, and the open work now."""

    now: datetime
    since: datetime
    # channel -> status -> count, for the deliveries scheduled since `since`.
    counts: dict[str, dict[str, int]]
    # Failed among those that ended sent or failed; None before any ended.
    failure_rate: float | None
    # Seconds from scheduled (created_at) to sent, 95th percentile (nearest rank) of those sent.
    p95_seconds: float | None
    # The last 60 minutes, oldest first: sent (by sent_at) and failed (by when they failed).
    minutes: list[Minute]
    pending: Capped
    overdue: Capped
    sending: Capped
    oldest_pending: DeliveryTask | None
    latest_failures: list[DeliveryTask]

    @property
    def by_status(self) -> dict[str, int]:
        totals = dict.fromkeys(DeliveryTask.Status.values, 0)
        for statuses in self.counts.values():
            for status, count in statuses.items():
                totals[status] = totals.get(status, 0) + count
        return totals

    @property
    def scheduled(self) -> int:
        return sum(self.by_status.values())

    @property
    def channel_rows(self) -> list[ChannelRow]:
        return [
            ChannelRow(
                channel,
                [(status, statuses.get(status, 0)) for status in DeliveryTask.Status.values],
                sum(statuses.values()),
            )
            for channel, statuses in sorted(self.counts.items())
        ]

    @property
    def failure_percent(self) -> float | None:
        return None if self.failure_rate is None else self.failure_rate * 100

    @property
    def busiest_minute(self) -> int:
        return max((minute.sent + minute.failed for minute in self.minutes), default=0)

    @property
    def oldest_pending_age(self) -> timedelta | None:
        if self.oldest_pending is None:
            return None
        return self.now - self.oldest_pending.created_at

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values (the dashboard's JSON and the API)."""
        age = self.oldest_pending_age
        return {
            "now": self.now.isoformat(),
            "since": self.since.isoformat(),
            "scheduled": self.scheduled,
            "by_status": self.by_status,
            "by_channel": self.counts,
            "failure_rate": self.failure_rate,
            "p95_seconds": self.p95_seconds,
            "per_minute": [
                {"minute": each.start.isoformat(), "sent": each.sent, "failed": each.failed}
                for each in self.minutes
            ],
            "pending": {"count": self.pending.count, "more": self.pending.more},
            "overdue": {"count": self.overdue.count, "more": self.overdue.more},
            "sending": {"count": self.sending.count, "more": self.sending.more},
            "oldest_pending": None
            if self.oldest_pending is None or age is None
            else {**summary(self.oldest_pending), "age_seconds": age.total_seconds()},
            "latest_failures": [summary(task) for task in self.latest_failures],
        }


def summary(task: DeliveryTask) -> dict[str, Any]:
    """A delivery as JSON-ready values, without its text (for lists)."""
    return {
        "id": task.pk,
        "status": task.status,
        "channel": task.channel,
        "destination": task.destination,
        "phase": task.phase,
        "response_id": task.run.response_id,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "next_attempt_at": task.next_attempt_at.isoformat(),
        "last_error": task.last_error,
        "created_at": task.created_at.isoformat(),
        "sent_at": task.sent_at.isoformat() if task.sent_at else None,
    }


def _p95_seconds(sent: QuerySet[DeliveryTask], count: int) -> float | None:
    """The nearest-rank 95th percentile of schedule-to-sent, read as one row at its offset."""
    if count == 0:
        return None
    rank = math.ceil(0.95 * count) - 1
    latency = ExpressionWrapper(F("sent_at") - F("created_at"), output_field=DurationField())
    found = list(
        sent.annotate(latency=latency)
        .order_by("latency")
        .values_list("latency", flat=True)[rank : rank + 1]
    )
    return found[0].total_seconds() if found else None


def _per_minute(queryset: QuerySet[DeliveryTask], field: str, first: datetime) -> dict:
    rows = (
        queryset.filter(**{f"{field}__gte": first})
        .annotate(minute=TruncMinute(field))
        .values("minute")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return {row["minute"]: row["n"] for row in rows}


def delivery_stats(*, now: datetime | None = None) -> DeliveryStats:
    now = now or timezone.now()
    since = now - WINDOW
    recent = DeliveryTask.objects.filter(created_at__gte=since)
    counts: dict[str, dict[str, int]] = {}
    rows = recent.values("channel", "status").annotate(n=Count("pk")).order_by()
    for row in rows:
        counts.setdefault(row["channel"], {})[row["status"]] = row["n"]
    sent_count = sum(statuses.get("sent", 0) for statuses in counts.values())
    failed_count = sum(statuses.get("failed", 0) for statuses in counts.values())
    ended = sent_count + failed_count

    sent = recent.filter(status=DeliveryTask.Status.SENT, sent_at__isnull=False)
    failed = recent.filter(status=DeliveryTask.Status.FAILED)
    # A failed row is last written when it fails (retries and cancels apply to other states).
    first = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
    sent_by_minute = _per_minute(sent, "sent_at", first)
    failed_by_minute = _per_minute(failed, "updated_at", first)
    minutes = []
    for offset in range(60):
        start = first + timedelta(minutes=offset)
        minutes.append(Minute(start, sent_by_minute.get(start, 0), failed_by_minute.get(start, 0)))

    pending = DeliveryTask.objects.filter(status=DeliveryTask.Status.PENDING)
    listed = with_run(DeliveryTask.objects.select_related("identity").defer("text"))
    return DeliveryStats(
        now=now,
        since=since,
        counts=counts,
        failure_rate=failed_count / ended if ended else None,
        p95_seconds=_p95_seconds(sent, sent_count),
        minutes=minutes,
        pending=capped_count(pending),
        overdue=capped_count(pending.filter(next_attempt_at__lt=now - OVERDUE_AFTER)),
        sending=capped_count(DeliveryTask.objects.filter(status=DeliveryTask.Status.SENDING)),
        # The (status, created_at) index, read from either end.
        oldest_pending=listed.filter(status=DeliveryTask.Status.PENDING)
        .order_by("created_at")
        .first(),
        latest_failures=list(
            listed.filter(status=DeliveryTask.Status.FAILED).order_by("-created_at")[
                :LATEST_FAILURES
            ]
        ),
    )
