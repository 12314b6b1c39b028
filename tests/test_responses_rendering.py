"""Rendering stored runs as Responses objects and items, in process."""

import uuid

import pytest
from agent_framework import Content, Message
from django.utils import timezone
from openai.types.responses import Response

from afhost.models import Run
from channels_app.responses.rendering import input_items, output_items, response_object


def _stored(role, contents, message_id):
    message = Message(role, contents)
    message.message_id = message_id
    return message.to_dict()


def test_input_items_of_a_stored_input_keep_their_ids_from_one_request_to_the_next():
    # given: an input with a function call and its result, as a run stores it
    stored = [
        _stored("user", ["what is the weather?"], "msg_1"),
        _stored(
            "assistant",
            [Content.from_function_call(call_id="call_1", name="weather", arguments="{}")],
            "msg_2",
        ),
        _stored("tool", [Content.from_function_result(call_id="call_1", result="sunny")], "msg_3"),
    ]

    # when
    first, second = input_items(stored), input_items(stored)

    # then
    assert [item["type"] for item in first] == ["message", "function_call", "function_call_output"]
    assert [item["id"] for item in first] == [item["id"] for item in second]
    assert len({item["id"] for item in first}) == 3


def _run(**fields) -> Run:
    return Run(public_id=uuid.uuid4(), created_at=timezone.now(), **fields)


_ANSWER = [
    Message(
        "assistant",
        [
            Content.from_function_call(call_id="call_1", name="weather", arguments="{}"),
            Content.from_function_result(call_id="call_1", result="sunny"),
            "It is sunny.",
        ],
    )
]
_USAGE = {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}


@pytest.mark.parametrize(
    "run",
    [
        _run(
            status=Run.Status.COMPLETED,
            completed_at=timezone.now(),
            output_items=output_items(_ANSWER),
            usage=_USAGE,
            model="gpt-x",
            instructions="Be brief.",
            metadata={"team": "a"},
            options={"temperature": 0.5, "top_p": 0.9, "max_tokens": 100},
            attributes={"conversation": "c1", "user": "u1", "safety_identifier": "s1"},
        ),
        _run(
            status=Run.Status.FAILED,
            error={"code": "server_error", "message": "The agent failed to produce a response."},
            attributes={"previous_response_id": f"resp_{uuid.uuid4().hex}"},
        ),
        _run(
            status=Run.Status.INCOMPLETE,
            finish_reason="max_output_tokens",
            output_items=output_items(_ANSWER),
            usage=_USAGE,
        ),
        _run(status=Run.Status.QUEUED, is_background=True),
        _run(status=Run.Status.CANCELLED, is_background=True, is_stored=True),
        _run(status=Run.Status.IN_PROGRESS, is_stored=False, truncation=Run.Truncation.AUTO),
    ],
    ids=lambda run: run.status,
)
def test_a_response_object_is_the_sdks_response_as_openai_sends_it(run):
    # when
    rendered = response_object(run)

    # then: the SDK's Response takes it and gives the same object back (no field dropped,
    # renamed or defaulted), with OpenAI's whole-second times
    assert Response.model_validate(rendered).model_dump(mode="json", exclude_none=True) == rendered
    assert isinstance(rendered["created_at"], int)
    assert rendered["status"] == run.status
    assert (rendered.get("usage") is not None) == (run.usage is not None)
