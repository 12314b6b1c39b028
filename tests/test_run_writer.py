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
