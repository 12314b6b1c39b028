"""Workflows as targets: outputs as messages and frames, checkpoints as JSON rows, and a workflow
that asks a person, resumed by their next message (Responses API and Telegram)."""

import asyncio
import contextlib
import json
from datetime import timedelta
from unittest import mock

import pytest
from agent_framework import Message
from agent_framework.exceptions import WorkflowCheckpointException
from asgiref.sync import async_to_sync
from django.utils import timezone
from openai import OpenAI

from afhost import services
from afhost.db import db_call
from afhost.models import Run, RunCheckpoint
from afhost.targets import TargetLoadError, get_target, load_target
from afhost.types import HostedRunResult
from afhost.workflows import WorkflowTarget, decode_checkpoint, encode_checkpoint, hosted_run
from tests import workflows
from tests.conftest import sdk_client
from tests.workflows import EFFECTS, effects, paused_greeting

PRIVATE = 1111111


def _texts(response):
    return [m.text for m in response.messages]


def test_a_workflow_factory_is_hosted_with_each_output_a_message_and_a_frame():
    # given
    target = load_target("tests.workflows:pipeline")

    # when
    response = asyncio.run(target.run([Message("user", ["slow 0"])]))

    # then
    assert isinstance(target, WorkflowTarget)
    assert _texts(response) == ["one done", "two done", "three done"]
    assert len({m.message_id for m in response.messages}) == 3
    assert HostedRunResult.from_response(response).workflow_outputs == [
        {"type": "output", "data": "one done", "executor_id": "one"},
        {"type": "output", "data": "two done", "executor_id": "two"},
        {"type": "output", "data": "three done", "executor_id": "three"},
    ]


def test_other_output_data_becomes_json_text_and_a_json_frame():
    # when
    response = asyncio.run(load_target("tests.workflows:report").run([Message("user", ["a b"])]))

    # then
    assert _texts(response) == ["2 words", '{"words": 2, "shouted": "A B"}']
    assert response.additional_properties["workflow_outputs"][1] == {
        "type": "output",
        "data": {"words": 2, "shouted": "A B"},
        "executor_id": "report",
    }


def test_an_agent_in_a_workflow_streams_its_answer_as_one_message():
    # given
    target = load_target("tests.workflows:assistant")

    async def collect():
        stream = target.run([Message("user", ["hello"])], stream=True)
        return [update.text async for update in stream], await stream.get_final_response()

    # when
    updates, response = asyncio.run(collect())

    # then
    assert updates[:3] == ["You ", "said: ", '"hello". ']
    assert _texts(response) == [
        'You said: "hello". That is the first thing you told me. '
        "We have exchanged 1 message(s) so far."
    ]
    frames = response.additional_properties["workflow_outputs"]
    assert frames[0]["data"]["type"] == "agent_response_update"
    assert {frame["executor_id"] for frame in frames} == {"scripted"}


def test_a_request_for_input_shows_its_prompt_and_its_frame():
    # when
    response = asyncio.run(load_target("tests.workflows:greeting").run([Message("user", ["hi"])]))

    # then
    assert _texts(response) == ["What is your name?"]
    [frame] = response.additional_properties["workflow_outputs"]
    assert frame["type"] == "request_info"
    assert frame["data"] == {"prompt": "What is your name?", "name": ""}
    assert frame["source_executor_id"] == "greeter"
    assert frame["request_id"]


def test_a_built_workflow_runs_one_run_at_a_time_each_from_how_it_was_loaded():
    # given: a Workflow instance, which refuses to run twice at once
    target = load_target("tests.workflows:greeting_instance")

    async def three_at_once():
        return await asyncio.gather(*(target.run([Message("user", ["hi"])]) for _ in range(3)))

    # when
    responses = asyncio.run(three_at_once())

    # then: each asked its own question, none saw another's pending request
    assert [_texts(response) for response in responses] == [["What is your name?"]] * 3


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("tests.workflows:doubling", "start executor takes int; afhost gives a workflow"),
        ("tests.workflows:not_a_workflow", "must build a Workflow; this one returned a str"),
    ],
)
def test_a_workflow_that_cannot_be_hosted_is_refused_clearly(path, message):
    with pytest.raises(TargetLoadError, match=message):
        load_target(path)


def test_a_checkpoint_is_stored_as_json_and_restored_whole():
    # given: a checkpoint holding a pending request (a dataclass, its types) and messages
    checkpoint = paused_greeting()

    # when
    stored = json.loads(json.dumps(encode_checkpoint(checkpoint)))
    restored = decode_checkpoint(stored)

    # then
    assert "pickle" not in json.dumps(stored)
    assert restored.checkpoint_id == checkpoint.checkpoint_id
    [(request_id, event)] = restored.pending_request_info_events.items()
    original = checkpoint.pending_request_info_events[request_id]
    assert event.data == original.data == workflows.Question(prompt="What is your name?")
    assert event.response_type is str
    assert restored.state.keys() == checkpoint.state.keys()


@pytest.mark.parametrize(
    "name",
    [
        "os:system",  # not a class
        "subprocess:Popen",  # a class, outside the allowed packages
        "afhost.services:StartedRun",  # a dataclass, outside them too
    ],
)
def test_a_checkpoint_naming_a_class_it_may_not_hold_is_refused(name):
    # given
    stored = encode_checkpoint(paused_greeting())
    text = json.dumps(stored).replace("tests.workflows:Question", name)

    # then
    with pytest.raises(WorkflowCheckpointException, match=repr(name)):
        decode_checkpoint(json.loads(text))


def test_a_malformed_checkpoint_is_refused_as_one():
    stored = encode_checkpoint(paused_greeting())
    text = json.dumps(stored).replace('"fields"', '"mangled"')

    with pytest.raises(WorkflowCheckpointException, match="malformed"):
        decode_checkpoint(json.loads(text))


def test_a_checkpoint_holding_a_class_of_another_package_is_not_stored(settings):
    # given: the workflow's package is not the target's
    settings.AFHOST_TARGET = "elsewhere.agent:build"

    # then: it cannot be stored (so nothing restores it later)
    with pytest.raises(TypeError, match="AFHOST_CHECKPOINT_MODULES"):
        encode_checkpoint(paused_greeting())
    settings.AFHOST_CHECKPOINT_MODULES = ["tests"]
    assert decode_checkpoint(encode_checkpoint(paused_greeting()))


def test_a_run_that_ran_before_resumes_from_its_latest_checkpoint(db, tmp_path, monkeypatch):
    # given: a pipeline run whose worker died after its first step had been checkpointed
    monkeypatch.setenv(EFFECTS, str(tmp_path / "effects"))
    target = load_target("tests.workflows:pipeline")
    run = Run.objects.create(channel="responses", isolation_key="k", status="in_progress")
    first_step = [{"type": "output", "data": "one done", "executor_id": "one"}]

    def call(stream):
        token = hosted_run.set(run)
        try:
            return target.run([Message("user", ["slow 0.3"])], stream=stream)
        finally:
            hosted_run.reset(token)

    @db_call
    def past_first_step():
        return [row.outputs for row in RunCheckpoint.objects.filter(run=run)] == [first_step]

    async def die_after_first_step():
        running = asyncio.ensure_future(call(stream=True).get_final_response())
        while not await past_first_step():  # noqa: ASYNC110 (a row another task writes)
            await asyncio.sleep(0.01)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running

    async def run_again():
        return await call(stream=False)

    async_to_sync(die_after_first_step)()
    assert effects() == ["one"]

    # when: it runs again
    response = async_to_sync(run_again)()

    # then: the first step did not run again, the run's output is whole, and the run keeps its
    # latest checkpoint alone
    assert effects() == ["one", "two", "three"]
    assert _texts(response) == ["one done", "two done", "three done"]
    assert RunCheckpoint.objects.filter(run=run).count() == 1


def _lost_background_run(*, checkpointed_after_start: bool, streamed: bool = False) -> Run:
    now = timezone.now()
    run = Run.objects.create(
        channel="responses",
        isolation_key="k",
        status=Run.Status.IN_PROGRESS,
        is_background=True,
        is_streamed=streamed,
        started_at=now - timedelta(seconds=10),
        lease_owner="dead",
        lease_expires_at=now - timedelta(seconds=1),
    )
    seconds = -5 if checkpointed_after_start else -15
    RunCheckpoint.objects.create(
        run=run, checkpoint_id=str(run.pk), state={}, created_at=now + timedelta(seconds=seconds)
    )
    return run


def test_the_sweeper_queues_again_a_workflow_run_that_progressed_and_fails_one_that_did_not(
    db, django_capture_on_commit_callbacks
):
    # given: background workflow runs whose worker died; one checkpointed since it started, one
    # did not, and one did but streams (its stored events cannot be taken back to resume it)
    progressed = _lost_background_run(checkpointed_after_start=True)
    stuck = _lost_background_run(checkpointed_after_start=False)
    streamed = _lost_background_run(checkpointed_after_start=True, streamed=True)

    # when
    with (
        mock.patch("afhost.services.async_task", autospec=True) as async_task,
        django_capture_on_commit_callbacks(execute=True),
    ):
        counts = services.sweep_runs()

    # then
    assert counts == (1, 2)
    async_task.assert_called_once_with(
        "afhost.tasks.execute_run", progressed.pk, q_options=mock.ANY
    )
    for run in (progressed, stuck, streamed):
        run.refresh_from_db()
    assert (progressed.status, progressed.lease_owner) == (Run.Status.QUEUED, "")
    assert stuck.status == streamed.status == Run.Status.FAILED


# --- Responses API ------------------------------------------------------------------------


@pytest.fixture
def workflow_client(live_db, live_server_factory, raw_api_key):
    """An openai client against a live server hosting a workflow."""

    def make(path: str) -> OpenAI:
        return sdk_client(live_server_factory(AFHOST_TARGET=path), raw_api_key)

    return make


def _item_texts(response):
    return [item.content[0].text for item in response.output]


def test_each_workflow_output_is_an_output_item_of_its_own(workflow_client):
    # given
    client = workflow_client("tests.workflows:pipeline")

    # when
    blocking = client.responses.create(model="wf", input="slow 0")
    events = list(client.responses.create(model="wf", input="slow 0", stream=True))

    # then
    assert _item_texts(blocking) == ["one done", "two done", "three done"]
    streamed = events[-1].response
    assert _item_texts(streamed) == ["one done", "two done", "three done"]
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert deltas == ["one done", "two done", "three done"]


def test_a_workflow_asking_for_input_resumes_with_the_next_message(workflow_client):
    # given
    client = workflow_client("tests.workflows:greeting")

    # when: in a named conversation, and by previous_response_id
    asked = client.responses.create(model="wf", input="hi", conversation="c1")
    named = client.responses.create(model="wf", input="Ada", conversation="c1")
    done = client.responses.create(model="wf", input="green", conversation="c1")
    branch = client.responses.create(model="wf", input="Grace", previous_response_id=asked.id)

    # then
    assert asked.output_text == "What is your name?"
    assert named.output_text == "Nice to meet you, Ada. Your favourite colour?"
    assert done.output_text == "Hello Ada, green it is!"
    assert branch.output_text == "Nice to meet you, Grace. Your favourite colour?"
    assert {run.status for run in Run.objects.all()} == {"completed"}


def test_a_finished_workflow_starts_afresh_with_the_next_message(workflow_client):
    # given
    client = workflow_client("tests.workflows:greeting")
    client.responses.create(model="wf", input="hi", conversation="c2")
    client.responses.create(model="wf", input="Ada", conversation="c2")
    client.responses.create(model="wf", input="green", conversation="c2")

    # when
    again = client.responses.create(model="wf", input="hello again", conversation="c2")

    # then
    assert again.output_text == "What is your name?"


# --- Telegram -----------------------------------------------------------------------------


@pytest.fixture
def greeting_target(settings):
    settings.AFHOST_TARGET = "tests.workflows:greeting"
    get_target.cache_clear()
    yield
    get_target.cache_clear()


def test_a_telegram_chat_answers_a_workflow_question_in_its_next_message(
    greeting_target, telegram_inbox, telegram_api, telegram_update
):
    # when
    telegram_inbox.deliver(
        telegram_update("private_text", text="hi"),
        telegram_update("private_text", text="Ada"),
        telegram_update("private_text", text="blue"),
    )

    # then
    assert telegram_api.sent_texts(PRIVATE) == [
        "What is your name?",
        "Nice to meet you, Ada. Your favourite colour?",
        "Hello Ada, blue it is!",
    ]
    runs = Run.objects.order_by("pk")
    assert [run.checkpoints.exists() for run in runs] == [True, True, True]
