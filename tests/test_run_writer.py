"""Foreground runs are stored from one thread: inserted as they start, finished many per batch."""

import asyncio
import threading
import time
from unittest import mock

import pytest
from agent_framework import Message
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext

from afhost import services
from afhost.db import insert_rows
from afhost.models import Conversation, Run
from afhost.types import ChannelIdentity, ChannelRequest, HostedRunResult
from afhost.writer import RunWriter

DONE = HostedRunResult(status="completed", messages=[Message("assistant", ["done"])])

# The writer commits from its own thread and connection, so these tests commit too.
pytestmark = pytest.mark.django_db(transaction=True)


def _prepared(text="hi", **fields):
    request = ChannelRequest(
        channel="responses",
        identity=ChannelIdentity(channel="api", native_id="key.w"),
        input=[Message("user", [text])],
        **fields,
    )
    return services.prepare_run(request=request)


def _wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_runs_that_end_while_a_batch_is_written_are_inserted_together_finished():
    # given: the first batch is held until every run has ended
    writer = RunWriter()
    started = [_prepared(f"run {i}") for i in range(20)]
    gate = threading.Event()
    real_store = services.store_runs

    def store(**kwargs):
        gate.wait(timeout=5)
        real_store(**kwargs)

    async def finish_all():
        finishing = [
            asyncio.ensure_future(writer.finish(entry, DONE, [{"type": "message"}]))
            for entry in started
        ]
        await asyncio.sleep(0)  # every finish is queued
        gate.set()
        await asyncio.gather(*finishing)

    # when
    with mock.patch("afhost.services.store_runs", side_effect=store) as store_runs:
        asyncio.run(finish_all())

    # then: at most one batch for the first, one for all the others
    assert store_runs.call_count in (1, 2)
    assert Run.objects.filter(status="completed").count() == 20
    assert Run.objects.get(pk=started[0].run.pk).output_items == [{"type": "message"}]


def test_a_run_is_visible_in_progress_while_its_model_works():
    # given
    writer = RunWriter()
    entry = _prepared()

    # when
    writer.start(entry)

    # then
    _wait_for(lambda: Run.objects.filter(public_id=entry.run.public_id).exists())
    row = Run.objects.get(public_id=entry.run.public_id)
    assert row.status == "in_progress"
    assert row.lease_expires_at is not None

    # when
    asyncio.run(writer.finish(entry, DONE, []))

    # then
    row.refresh_from_db()
    assert row.status == "completed"
    assert (row.lease_owner, row.lease_expires_at) == ("", None)


def test_a_stored_run_moves_its_conversation_on_and_frees_it():
    # given
    writer = RunWriter()
    entry = _prepared(conversation_key="conv_1")

    # when
    asyncio.run(writer.finish(entry, DONE, []))

    # then
    conversation = Conversation.objects.get(key="conv_1")
    assert conversation.head_run_id == entry.run.pk
    assert (conversation.lease_owner, conversation.lease_expires_at) == ("", None)


def test_a_failed_write_fails_the_waiting_requests():
    # given
    writer = RunWriter()
    entry = _prepared()

    # when
    with mock.patch("afhost.services.store_runs", side_effect=RuntimeError("database down")):
        with pytest.raises(RuntimeError, match="database down"):
            asyncio.run(writer.finish(entry, DONE, []))

    # then
    assert Run.objects.exists() is False


def test_a_writer_with_nothing_left_to_write_gives_its_connection_back():
    # given
    writer = RunWriter()
    log: list[str] = []
    closed_after_write = threading.Event()

    def close_all():
        log.append("close")
        if "write" in log:
            closed_after_write.set()

    # when
    with (
        mock.patch("afhost.services.store_runs", side_effect=lambda **kwargs: log.append("write")),
        mock.patch("afhost.writer.connections.close_all", side_effect=close_all),
    ):
        asyncio.run(writer.finish(_prepared(), DONE, []))
        closed = closed_after_write.wait(timeout=5)

    # then
    assert closed
    assert log[-2:] == ["write", "close"]


def test_a_run_that_cannot_be_stored_fails_alone_not_the_runs_written_with_it():
    # given: one run the database refuses, among runs that finished at the same time
    writer = RunWriter()
    good = [_prepared(f"good {i}") for i in range(5)]
    bad = _prepared("bad")
    real_store = services.store_runs

    def store(*, started, finished):
        if any(entry is bad for entry, _, _ in finished):
            raise RuntimeError("value too long")
        real_store(started=started, finished=finished)

    async def finish_all():
        return await asyncio.gather(
            *(writer.finish(entry, DONE, []) for entry in [*good[:2], bad, *good[2:]]),
            return_exceptions=True,
        )

    # when
    with mock.patch("afhost.services.store_runs", side_effect=store):
        outcomes = asyncio.run(finish_all())

    # then
    assert [type(outcome).__name__ for outcome in outcomes] == [
        "NoneType",
        "NoneType",
        "RuntimeError",
        "NoneType",
        "NoneType",
        "NoneType",
    ]
    assert set(Run.objects.values_list("pk", flat=True)) == {entry.run.pk for entry in good}
    assert bad.run.pk is None


def test_a_batch_is_inserted_as_bulk_create_would_in_as_many_statements_as_the_database_needs():
    # given: runs in a conversation, after a previous run, some finished, more than one
    # statement holds
    first = _prepared("first")
    services.store_runs(started=[], finished=[(first, DONE, [{"type": "message"}])])
    conversation = Conversation.objects.create(channel="responses", isolation_key="k", key="c")
    started = [_prepared(f"run {i}", metadata={"n": i}) for i in range(7)]
    for entry in started:
        entry.run.conversation, entry.run.previous_run = conversation, first.run
    ending, going_on = started[:4], started[4:]

    # when
    with mock.patch.object(connection.ops, "bulk_batch_size", return_value=3):
        with CaptureQueriesContext(connection) as queries:
            services.store_runs(
                started=going_on,
                finished=[(entry, DONE, [{"type": "message"}]) for entry in ending],
            )

    # then
    inserts = [query for query in queries if query["sql"].startswith("INSERT")]
    assert len(inserts) == 3
    for entry in started:
        assert not entry.run._state.adding
        stored = Run.objects.get(pk=entry.run.pk)
        assert (stored.public_id, stored.conversation, stored.previous_run) == (
            entry.run.public_id,
            conversation,
            first.run,
        )
        assert stored.metadata == entry.run.metadata
        assert stored.input_messages == entry.run.input_messages
        assert stored.created_at == entry.run.created_at is not None
    assert [Run.objects.get(pk=entry.run.pk).status for entry in started] == ["completed"] * 4 + [
        "in_progress"
    ] * 3
    assert Run.objects.get(pk=ending[0].run.pk).output_items == [{"type": "message"}]


def test_a_run_whose_conversation_was_never_saved_is_refused_not_inserted_without_it():
    # given
    entry = _prepared("orphan")
    entry.run.conversation = Conversation(channel="responses", isolation_key="k", key="unsaved")

    # when
    with pytest.raises(ValueError, match="unsaved related object 'conversation'"):
        insert_rows([entry.run])

    # then
    assert not Run.objects.exists()


def test_rows_inserted_in_several_statements_are_kept_all_or_none():
    # given: two runs, one statement each, the second refused by the database
    first, second = _prepared("first"), _prepared("second")
    second.run.public_id = first.run.public_id

    # when
    with mock.patch.object(connection.ops, "bulk_batch_size", return_value=1):
        with pytest.raises(IntegrityError):
            insert_rows([first.run, second.run])

    # then
    assert not Run.objects.exists()
