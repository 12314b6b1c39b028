"""Reads of the host core that span rows."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from agent_framework import Message
from django.conf import settings
from django.db import connection
from django.db.models import Q

from afhost.db import unique_or_none
from afhost.exceptions import HistoryTooLong, RunNotFound
from afhost.models import Run, RunEvent

# Walks a run's chain of previous runs, newest first, adding up their sizes, and stops one run
# past `budget`; the messages of the runs that fit come with it. One query however long the
# conversation; older runs are measured, not loaded.
_RUN_TABLE = Run._meta.db_table
_HISTORY_SQL = f"""
WITH RECURSIVE chain(id, previous_run_id, depth, total) AS (
    SELECT id, previous_run_id, 0, messages_size FROM {_RUN_TABLE} WHERE id = %(run)s
    UNION ALL
    SELECT r.id, r.previous_run_id, c.depth + 1, c.total + r.messages_size
    FROM {_RUN_TABLE} r JOIN chain c ON r.id = c.previous_run_id
    WHERE c.total <= %(budget)s
)
SELECT c.total <= %(budget)s,
    CASE WHEN c.total <= %(budget)s THEN r.input_messages END,
    CASE WHEN c.total <= %(budget)s THEN r.output_messages END
FROM chain c JOIN {_RUN_TABLE} r ON r.id = c.id
ORDER BY c.depth DESC
"""  # noqa: S608 (the table's name, from the model)
_MESSAGES = Run._meta.get_field("input_messages")


def get_visible_run(*, isolation_key: str, public_id: uuid.UUID) -> Run:
    """The stored run with this id, if the caller with this isolation key may see it."""
    run = unique_or_none(Run.objects.visible_to(isolation_key).filter(public_id=public_id))
    if run is None:
        raise RunNotFound("not found")
    return run


def get_invocation(*, isolation_key: str, invocation_id: str) -> Run:
    """The caller's latest stored Invocations run named `invocation_id`."""
    runs = Run.objects.visible_to(isolation_key).filter(
        channel="invocations", invocation_id=invocation_id
    )
    run = runs.order_by("-created_at").first()
    if run is None:
        raise RunNotFound("not found")
    return run


def conversation_history(
    *, run: Run | None, truncation: str = Run.Truncation.AUTO, max_size: int | None = None
) -> list[Message]:
    """The messages of the chain of runs ending with `run` (inputs and outputs, oldest first)
    that fit in `max_size` characters of stored JSON (AFHOST_MAX_HISTORY_BYTES): the newest
    whole runs that do. Older runs are measured, not loaded.

    With truncation "disabled", a chain that does not fit raises HistoryTooLong instead.
    """
    if run is None:
        return []
    budget = settings.AFHOST_MAX_HISTORY_BYTES if max_size is None else max_size
    with connection.cursor() as cursor:
        cursor.execute(_HISTORY_SQL, {"run": run.pk, "budget": budget})
        chain = cursor.fetchall()
    if not all(fits for fits, _, _ in chain) and truncation == Run.Truncation.DISABLED:
        raise HistoryTooLong(
            f"the conversation's history exceeds {budget} characters", param="input"
        )
    messages: list[Message] = []
    for fits, input_messages, output_messages in chain:  # oldest first
        if fits:
            for stored in (input_messages, output_messages):
                data = _MESSAGES.from_db_value(stored, None, connection)  # type: ignore[arg-type]
                messages.extend(Message.from_dict(m) for m in data)
    return messages


def runs_progress(*, cursors: Mapping[int, int]) -> dict[int, tuple[str | None, list[dict]]]:
    """For each run (by pk) in `cursors`: its status (None once deleted) and its stored events
    numbered above its cursor, in order. Two queries however many runs.

    Statuses are read first: events and a terminal status are committed together, so a
    terminal status read here means the events that follow are all there are.
    """
    if not cursors:
        return {}
    statuses = dict(Run.objects.filter(pk__in=cursors).values_list("pk", "status"))
    progress: dict[int, tuple[str | None, list[dict]]] = {
        pk: (statuses.get(pk), []) for pk in cursors
    }
    after = Q()
    for pk, cursor in cursors.items():
        after |= Q(run_id=pk, sequence_number__gt=cursor)
    for run_id, data in (
        RunEvent.objects.filter(after)
        .order_by("run_id", "sequence_number")
        .values_list("run_id", "data")
    ):
        progress[run_id][1].append(data)
    return progress


def next_event_sequence(*, run: Run) -> int:
    last = RunEvent.objects.filter(run=run).order_by("-sequence_number").first()
    return 0 if last is None else last.sequence_number + 1
