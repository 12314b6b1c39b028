"""Finished foreground runs are stored from one thread, many per statement."""

import asyncio
import threading
from unittest import mock

import pytest
from agent_framework import Message

from afhost import services
from afhost.models import Conversation, Run
from afhost.types import ChannelIdentity, ChannelRequest, HostedRunResult
from afhost.writer import RunWriter

DONE = HostedRunResult(status="completed", messages=[Message("assistant", ["done"])])


def _prepared(text="hi", **fields):
    request = ChannelRequest(
        channel="responses",
        identity=ChannelIdentity(channel="api", native_id="key.w"),
        input=[Message("user", [text])],
        **fields,
    )
    return services.prepare_run(request=request).run


@pytest.mark.django_db(transaction=True)  # the writer commits from its own thread and connection
def test_concurrent_runs_are_inserted_together_with_their_outcome():
    # given
    writer = RunWriter()
    runs = [_prepared(f"run {i}") for i in range(20)]

    async def store_all():
        await asyncio.gather(*(writer.store(run, DONE, [{"type": "message"}]) for run in runs))

    # when
    with mock.patch(
        "afhost.services.store_finished_runs", wraps=services.store_finished_runs
    ) as store:
        asyncio.run(store_all())

    # then
    assert Run.objects.filter(status="completed").count() == 20
    assert all(run.pk is not None for run in runs)
    assert store.call_count < 20
    assert Run.objects.get(pk=runs[0].pk).output_items == [{"type": "message"}]


@pytest.mark.django_db(transaction=True)
def test_a_stored_run_moves_its_conversation_on():
    # given
    writer = RunWriter()
    run = _prepared(conversation_key="conv_1")

    # when
    asyncio.run(writer.store(run, DONE, []))

    # then
    assert Conversation.objects.get(key="conv_1").head_run_id == run.pk


@pytest.mark.django_db(transaction=True)
def test_a_failed_write_fails_the_waiting_requests():
    # given
    writer = RunWriter()
    run = _prepared()

    # when
    with mock.patch(
        "afhost.services.store_finished_runs", side_effect=RuntimeError("database down")
    ):
        with pytest.raises(RuntimeError, match="database down"):
            asyncio.run(writer.store(run, DONE, []))

    # then
    assert Run.objects.exists() is False


@pytest.mark.django_db(transaction=True)
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
        mock.patch(
            "afhost.services.store_finished_runs",
            side_effect=lambda **kwargs: log.append("write"),
        ),
        mock.patch("afhost.writer.connections.close_all", side_effect=close_all),
    ):
        asyncio.run(writer.store(_prepared(), DONE, []))
        closed = closed_after_write.wait(timeout=5)

    # then
    assert closed
    assert log[-2:] == ["write", "close"]


@pytest.mark.django_db(transaction=True)
def test_a_run_that_cannot_be_stored_fails_alone_not_the_runs_written_with_it():
    # given: one run the database refuses, among runs that finished at the same time
    writer = RunWriter()
    good = [_prepared(f"good {i}") for i in range(5)]
    bad = _prepared("bad")
    real_store = services.store_finished_runs

    def store(*, finished):
        if any(run is bad for run, _, _ in finished):
            raise RuntimeError("value too long")
        real_store(finished=finished)

    async def store_all():
        return await asyncio.gather(
            *(writer.store(run, DONE, []) for run in [*good[:2], bad, *good[2:]]),
            return_exceptions=True,
        )

    # when
    with mock.patch("afhost.services.store_finished_runs", side_effect=store):
        outcomes = asyncio.run(store_all())

    # then
    assert [type(outcome).__name__ for outcome in outcomes] == [
        "NoneType",
        "NoneType",
        "RuntimeError",
        "NoneType",
        "NoneType",
        "NoneType",
    ]
    assert set(Run.objects.values_list("pk", flat=True)) == {run.pk for run in good}
    assert bad.pk is None
