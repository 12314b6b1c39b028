"""The host core's run services, in process: queueing, the worker task, cancel, history."""

from datetime import timedelta
from unittest import mock

import pytest
from agent_framework import Message
from asgiref.sync import async_to_sync
from django.db import OperationalError
from django.utils import timezone

from afhost import execution, services, tasks
from afhost.exceptions import ConversationBusy, InvalidRunState
from afhost.leases import keeper
from afhost.models import Conversation, Run, RunEvent
from afhost.selectors import conversation_history
from afhost.types import ChannelIdentity, ChannelRequest, HostedRunResult


@pytest.fixture
def request_factory():
    def make(text="hello", **fields):
        fields.setdefault("channel", "responses")
        fields.setdefault("identity", ChannelIdentity(channel="api", native_id="key.test"))
        return ChannelRequest(input=[Message("user", [text])], **fields)

    return make


@pytest.fixture
def queued_run(db, request_factory):
    def make(text="hello", **fields):
        with mock.patch("afhost.services.async_task"):
            return services.queue_run(request=request_factory(text, background=True, **fields))

    return make


def _queued_call(run: Run):
    return mock.call(
        "afhost.tasks.execute_run",
        run.pk,
        q_options={"task_name": f"run-{run.public_id}", "group": "runs"},
    )


def test_on_the_database_broker_a_background_run_is_queued_in_its_transaction(
    db, request_factory, django_capture_on_commit_callbacks, settings
):
    # given
    settings.Q_CLUSTER = {
        **{name: value for name, value in settings.Q_CLUSTER.items() if name != "redis"},
        "orm": "default",
    }

    # when
    with mock.patch("afhost.services.async_task", autospec=True) as async_task:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            run = services.queue_run(request=request_factory(background=True))
            queued_before_commit = async_task.call_args_list.copy()

    # then: the task row commits with the run, or neither does
    assert run.status == Run.Status.QUEUED
    assert queued_before_commit == [_queued_call(run)]
    assert callbacks == []


def test_on_redis_a_background_run_is_queued_only_after_commit(
    db, on_redis, request_factory, django_capture_on_commit_callbacks
):
    # when
    with mock.patch("afhost.services.async_task", autospec=True) as async_task:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            run = services.queue_run(request=request_factory(background=True))
        async_task.assert_not_called()
        for callback in callbacks:
            callback()

    # then
    assert async_task.call_args_list == [_queued_call(run)]


def test_a_broker_that_refuses_the_task_leaves_the_run_stored_for_the_sweeper(
    db, on_redis, request_factory, django_capture_on_commit_callbacks, caplog
):
    # given
    refused = ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    # when
    with mock.patch("afhost.services.async_task", side_effect=refused) as async_task:
        with django_capture_on_commit_callbacks(execute=True):
            run = services.queue_run(request=request_factory(background=True))
        Run.objects.filter(pk=run.pk).update(enqueued_at=timezone.now() - timedelta(minutes=3))
        async_task.side_effect = None
        with django_capture_on_commit_callbacks(execute=True):
            requeued, _ = services.sweep_runs()

    # then
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED
    assert requeued == 1
    assert async_task.call_args_list[-1] == _queued_call(run)
    record = next(r for r in caplog.records if r.name == "afhost.queueing")
    assert record.levelname == "ERROR"
    assert record.exc_info[1] is refused
    assert f"queueing run {run.public_id} failed; it is stored" in record.getMessage()


def test_the_task_runs_a_queued_run_to_completion(queued_run):
    # given
    run = queued_run("do it later")

    # when
    tasks.execute_run(run.pk)

    # then
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    assert run.output_items[0]["content"][0]["text"].startswith('You said: "do it later".')
    assert (
        Message.from_dict(run.output_messages[0]).text == run.output_items[0]["content"][0]["text"]
    )
    assert run.started_at is not None
    assert run.completed_at is not None
    assert not RunEvent.objects.filter(run=run).exists()  # not streamed: no events rendered


def test_a_streamed_background_run_stores_every_event_in_order(queued_run):
    # given
    run = queued_run("events please", stream=True)

    # when
    tasks.execute_run(run.pk)

    # then
    events = list(RunEvent.objects.filter(run=run).values_list("data", flat=True))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:3]] == [
        "response.created",
        "response.queued",
        "response.in_progress",
    ]
    assert events[-1]["type"] == "response.completed"


def test_a_worker_starts_a_queued_run_in_three_statements_and_holds_it_as_stored(
    queued_run, django_assert_num_queries
):
    # given
    earlier = queued_run("first")
    tasks.execute_run(earlier.pk)
    run = queued_run("second", previous_run_id=earlier.public_id)

    # when: the run read with what it continues, leased, and its history read
    with django_assert_num_queries(3):
        started = services.begin_background_run(run_id=run.pk)

    # then: what the worker holds is the stored row
    started.let_go()
    stored = Run.objects.get(pk=run.pk)
    held = started.run
    assert (held.status, held.started_at, held.lease_owner, held.previous_run_id) == (
        stored.status,
        stored.started_at,
        stored.lease_owner,
        earlier.pk,
    )
    assert stored.status == Run.Status.IN_PROGRESS


@pytest.mark.parametrize("status", [Run.Status.COMPLETED, Run.Status.CANCELLED, Run.Status.FAILED])
def test_the_task_leaves_a_run_that_is_no_longer_queued_alone(queued_run, status):
    # given
    run = queued_run()
    Run.objects.filter(pk=run.pk).update(status=status)

    # when
    tasks.execute_run(run.pk)

    # then
    run.refresh_from_db()
    assert run.status == status
    assert run.output_messages == []


def test_a_run_whose_process_died_is_failed_by_the_sweeper(queued_run):
    # given: a worker started the streamed run, then died: its lease ran out
    run = queued_run(stream=True)
    services.begin_background_run(run_id=run.pk)
    Run.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    # when
    counts = services.sweep_runs()

    # then
    assert counts == (0, 1)
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert run.error == {
        "code": "server_error",
        "message": "The run was interrupted before it finished.",
    }
    assert (run.lease_owner, run.lease_expires_at) == ("", None)
    assert (
        RunEvent.objects.filter(run=run).order_by("sequence_number").last().data["type"]
        == "response.failed"
    )


def test_the_sweeper_leaves_a_run_whose_process_renews_its_lease_alone(queued_run):
    # given
    run = queued_run()
    services.begin_background_run(run_id=run.pk)

    # when
    counts = services.sweep_runs()

    # then
    assert counts == (0, 0)
    assert Run.objects.get(pk=run.pk).status == Run.Status.IN_PROGRESS


def test_a_second_task_for_a_run_another_worker_is_running_leaves_it_alone(queued_run):
    # given: the sweeper re-enqueued a run whose first task then started it
    run = queued_run(stream=True)
    services.begin_background_run(run_id=run.pk)
    events = RunEvent.objects.filter(run=run).count()

    # when
    tasks.execute_run(run.pk)

    # then
    run.refresh_from_db()
    assert run.status == Run.Status.IN_PROGRESS
    assert run.error is None
    assert RunEvent.objects.filter(run=run).count() == events


def test_the_task_of_a_deleted_run_does_nothing(queued_run):
    # given
    run = queued_run()
    run.delete()

    # when / then
    tasks.execute_run(run.pk)
    assert Run.objects.exists() is False


def test_cancelling_a_queued_run_means_it_never_starts(queued_run):
    # given
    run = queued_run()

    # when
    services.cancel_run(run=run)
    tasks.execute_run(run.pk)

    # then
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert run.started_at is None


def test_a_finished_run_cannot_be_cancelled_or_a_running_one_deleted(queued_run):
    # given
    run = queued_run()

    # then
    with pytest.raises(InvalidRunState):
        services.delete_run(run=run)
    tasks.execute_run(run.pk)
    run.refresh_from_db()
    with pytest.raises(InvalidRunState, match="completed"):
        services.cancel_run(run=run)


def test_history_follows_the_chain_of_previous_runs(queued_run, request_factory):
    # given
    first = queued_run("one")
    tasks.execute_run(first.pk)
    second = queued_run("two", previous_run_id=first.public_id)
    tasks.execute_run(second.pk)

    # when
    started = services.start_run(request=request_factory("three", previous_run_id=second.public_id))

    # then
    assert [m.role for m in started.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert [m.text for m in started.messages if m.role == "user"] == ["one", "two", "three"]
    assert len(conversation_history(run=started.run)) == 5


@pytest.fixture
def two_turns(queued_run, settings):
    """Two finished turns, and a history budget that holds the second of them alone."""
    first = queued_run("one")
    tasks.execute_run(first.pk)
    second = queued_run("two", previous_run_id=first.public_id)
    tasks.execute_run(second.pk)
    settings.AFHOST_MAX_HISTORY_BYTES = Run.objects.get(pk=second.pk).messages_size
    return second


def test_history_over_the_budget_loses_its_oldest_runs(two_turns, request_factory):
    # when
    started = services.start_run(
        request=request_factory("three", previous_run_id=two_turns.public_id)
    )

    # then
    assert [m.text for m in started.messages if m.role == "user"] == ["two", "three"]


def test_a_background_run_that_may_not_truncate_an_over_long_history_fails(two_turns, queued_run):
    # given
    run = queued_run(
        "three", previous_run_id=two_turns.public_id, truncation="disabled", stream=True
    )

    # when
    tasks.execute_run(run.pk)

    # then: failed before its target ran, and its stream says so
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert run.error["code"] == "invalid_prompt"
    assert "context window" in run.error["message"]
    last = RunEvent.objects.filter(run=run).order_by("sequence_number").last()
    assert last.data["type"] == "response.failed"
    assert run.lease_owner == ""


def test_the_sweeper_requeues_runs_the_queue_lost_and_fails_abandoned_ones(
    queued_run, django_capture_on_commit_callbacks
):
    # given
    now = timezone.now()
    lost = queued_run("lost in the queue")
    fresh = queued_run("just queued")
    abandoned = queued_run("worker died")
    services.begin_background_run(run_id=abandoned.pk)
    Run.objects.filter(pk=lost.pk).update(enqueued_at=now - timedelta(minutes=3))
    Run.objects.filter(pk=abandoned.pk).update(lease_expires_at=now - timedelta(seconds=1))

    # when
    with (
        mock.patch("afhost.services.async_task", autospec=True) as async_task,
        django_capture_on_commit_callbacks(execute=True),
    ):
        counts = services.sweep_runs(now=now)

    # then
    assert counts == (1, 1)
    async_task.assert_called_once_with("afhost.tasks.execute_run", lost.pk, q_options=mock.ANY)
    lost.refresh_from_db()
    assert lost.enqueued_at > now - timedelta(seconds=5)
    assert Run.objects.get(pk=fresh.pk).status == Run.Status.QUEUED
    assert Run.objects.get(pk=abandoned.pk).status == Run.Status.FAILED


def test_a_second_turn_in_a_conversation_is_refused_while_the_first_runs(request_factory, db):
    # given: a turn holds the conversation
    services.start_run(request=request_factory("one", conversation_key="c1"))

    # when / then
    with pytest.raises(ConversationBusy):
        services.start_run(request=request_factory("two", conversation_key="c1"))
    with pytest.raises(ConversationBusy):
        services.prepare_run(request=request_factory("two", conversation_key="c1"))
    assert Run.objects.count() == 1


def test_a_conversation_begun_by_another_turn_meanwhile_is_found_busy(request_factory, db):
    # given: another turn creates (and holds) the conversation between our look and our insert
    services.start_run(request=request_factory("one", conversation_key="c1"))
    looks = iter([True])
    real_filter = Conversation.objects.filter

    def filter_(*args, **kwargs):
        found = real_filter(*args, **kwargs)
        return found.none() if next(looks, False) else found

    # when / then: our insert conflicts, and we find the conversation busy
    with mock.patch.object(Conversation.objects, "filter", filter_):
        with pytest.raises(ConversationBusy):
            services.start_run(request=request_factory("two", conversation_key="c1"))
    assert Conversation.objects.count() == 1
    assert Run.objects.count() == 1


def test_a_turn_never_continues_from_a_head_another_turn_moved_after_it_looked(request_factory, db):
    # given: a first turn holds the conversation; ours reads it, then the first ends
    first = services.start_run(request=request_factory("one", conversation_key="c1"))
    real_take_lease = services.take_lease

    def first_ends_meanwhile(model, pk, **kwargs):
        if model is Conversation:
            services.finish_run(
                started=first,
                result=HostedRunResult(status="completed", messages=[Message("assistant", ["1"])]),
                output_items=[],
            )
        return real_take_lease(model, pk, **kwargs)

    # when: our lease finds the head moved since our look (the first turn held it then)
    with mock.patch.object(services, "take_lease", first_ends_meanwhile):
        with pytest.raises(ConversationBusy):
            services.prepare_run(request=request_factory("two", conversation_key="c1"))
    second = services.prepare_run(request=request_factory("two", conversation_key="c1"))

    # then: the next look continues from the new head
    assert [m.text for m in second.messages] == ["one", "1", "two"]
    assert second.run.previous_run == first.run


def test_the_next_turn_in_a_conversation_sees_every_turn_before_it(request_factory, db):
    # given
    first = services.start_run(request=request_factory("one", conversation_key="c1"))
    services.finish_run(
        started=first,
        result=HostedRunResult(status="completed", messages=[Message("assistant", ["1"])]),
        output_items=[],
    )

    # when
    second = services.start_run(request=request_factory("two", conversation_key="c1"))

    # then
    assert [m.text for m in second.messages] == ["one", "1", "two"]
    assert second.run.previous_run == first.run
    assert Conversation.objects.get().head_run == first.run


def test_a_queued_run_in_a_conversation_starts_only_once_the_turn_before_it_ends(
    queued_run, request_factory
):
    # given: a background run queued while a foreground turn holds the conversation
    foreground = services.start_run(request=request_factory("one", conversation_key="c1"))
    background = queued_run("two", conversation_key="c1")

    # when / then: its worker must wait
    with pytest.raises(ConversationBusy):
        services.begin_background_run(run_id=background.pk)
    assert Run.objects.get(pk=background.pk).status == Run.Status.QUEUED

    # when: the turn before it ends
    services.finish_run(
        started=foreground,
        result=HostedRunResult(status="completed", messages=[Message("assistant", ["1"])]),
        output_items=[],
    )
    started = services.begin_background_run(run_id=background.pk)

    # then: it continues from that turn
    assert started.run.previous_run == foreground.run
    assert [m.text for m in started.messages] == ["one", "1", "two"]


def test_a_conversation_whose_turn_died_is_free_once_its_lease_runs_out(request_factory, db):
    # given: the process running a turn died
    services.start_run(request=request_factory("one", conversation_key="c1"))
    Conversation.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    # when
    second = services.start_run(request=request_factory("two", conversation_key="c1"))

    # then: the lost turn is not part of the conversation
    assert [m.text for m in second.messages] == ["two"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_target_slower_than_the_run_timeout_fails_its_run(queued_run, settings, stream):
    # given
    settings.AFHOST_RUN_TIMEOUT = 0.2
    run = queued_run("sleep 2", stream=stream)

    # when
    tasks.execute_run(run.pk)

    # then
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert run.error["message"] == "The agent took too long to answer."
    assert "AFHOST_RUN_TIMEOUT" in run.error_detail


def test_a_foreground_run_whose_web_process_died_is_failed_by_the_sweeper(request_factory, db):
    # given: a blocking create in progress, then its web process stopped renewing the lease
    started = services.start_run(request=request_factory("sleep 30"))
    Run.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    # when
    counts = services.sweep_runs()

    # then
    assert counts == (0, 1)
    run = Run.objects.get(pk=started.run.pk)
    assert run.status == Run.Status.FAILED
    assert run.error["message"] == "The run was interrupted before it finished."


def test_a_run_whose_outcome_cannot_be_stored_stops_being_renewed_and_ends_failed(queued_run):
    # given: the database goes away as the run ends
    run = queued_run()
    with (
        mock.patch(
            "afhost.services.finish_run", side_effect=OperationalError("connection refused")
        ),
        pytest.raises(OperationalError),
    ):
        tasks.execute_run(run.pk)

    # then: its process no longer renews the lease, which runs out ...
    assert (Run, run.pk) not in keeper.held()
    Run.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    # ... and the sweeper fails the run
    assert services.sweep_runs() == (0, 1)
    assert Run.objects.get(pk=run.pk).status == Run.Status.FAILED


def test_a_turn_that_fails_to_end_lets_its_conversation_go(request_factory, db):
    # given
    started = services.start_run(request=request_factory("one", conversation_key="c1"))
    conversation = Conversation.objects.get()
    keeper.hold(Conversation, conversation.pk, started.conversation_lease, started)

    # when: storing its outcome fails
    with (
        mock.patch(
            "afhost.services.finish_run", side_effect=OperationalError("connection refused")
        ),
        pytest.raises(OperationalError),
    ):
        async_to_sync(execution.run_blocking)(started)

    # then: nothing renews its leases any more; they run out, and the conversation is free again
    assert (Conversation, conversation.pk) not in keeper.held()
    assert (Run, started.run.pk) not in keeper.held()
