"""Reads of the host core that span rows."""

from __future__ import annotations

import uuid

from agent_framework import Message

from afhost.exceptions import RunNotFound
from afhost.models import Run, RunEvent

# Walks a run's chain of previous runs, oldest first. One query however long the conversation.
_HISTORY_SQL = """
WITH RECURSIVE chain(id, previous_run_id, depth) AS (
    SELECT id, previous_run_id, 0 FROM afhost_run WHERE id = %s
    UNION ALL
    SELECT r.id, r.previous_run_id, c.depth + 1
    FROM afhost_run r JOIN chain c ON r.id = c.previous_run_id
)
SELECT r.id, r.input_messages, r.output_messages
FROM chain c JOIN afhost_run r ON r.id = c.id
ORDER BY c.depth DESC
"""


def get_visible_run(*, isolation_key: str, public_id: uuid.UUID) -> Run:
    """The stored run with this id, if the caller with this isolation key may see it."""
    run = Run.objects.visible_to(isolation_key).filter(public_id=public_id).first()
    if run is None:
        raise RunNotFound("not found")
    return run


def conversation_history(*, run: Run | None) -> list[Message]:
    """Every message of the chain of runs ending with `run` (inputs and outputs, oldest first)."""
    if run is None:
        return []
    messages: list[Message] = []
    for row in Run.objects.raw(_HISTORY_SQL, [run.pk]):
        messages.extend(Message.from_dict(m) for m in row.input_messages)
        messages.extend(Message.from_dict(m) for m in row.output_messages)
    return messages


def run_progress(*, run: Run, after: int) -> tuple[str | None, list[dict]]:
    """The run's status (None once deleted) and its stored events numbered above `after`.

    The status is read first: events and the terminal status are committed together, so a
    terminal status read here means the events that follow are all there are.
    """
    status = Run.objects.filter(pk=run.pk).values_list("status", flat=True).first()
    events = list(
        RunEvent.objects.filter(run=run, sequence_number__gt=after)
        .order_by("sequence_number")
        .values_list("data", flat=True)
    )
    return status, events


def next_event_sequence(*, run: Run) -> int:
    last = RunEvent.objects.filter(run=run).order_by("-sequence_number").first()
    return 0 if last is None else last.sequence_number + 1
