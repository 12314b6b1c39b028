import asyncio
import time

import httpx
import openai
import pytest

from afhost.models import Run


def test_blocking_create_returns_a_completed_response(client):
    # when
    response = client.responses.create(model="demo", input="hello there")

    # then
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.output_text.startswith('You said: "hello there".')
    assert response.usage is not None
    assert response.usage.total_tokens > 0


def test_streaming_create_emits_the_standard_event_sequence(client):
    # when
    events = list(client.responses.create(model="demo", input="hello", stream=True))

    # then
    types = [event.type for event in events]
    assert types[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert events[-1].response.output_text == text
    assert text.startswith('You said: "hello".')


def test_stream_helper_accumulates_the_same_answer(client):
    # when
    with client.responses.stream(model="demo", input="stream me") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()

    # then
    assert len(deltas) > 3
    assert final.output_text == "".join(deltas)
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_async_client_creates_and_streams(async_client):
    async def scenario():
        created = await async_client.responses.create(model="demo", input="async hello")
        stream = await async_client.responses.create(
            model="demo", input="async stream", stream=True
        )
        return created, [event async for event in stream]

    # when
    created, events = asyncio.run(scenario())

    # then
    assert created.output_text.startswith('You said: "async hello".')
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text.startswith('You said: "async stream".')


def test_previous_response_id_continues_the_conversation(client):
    # given
    first = client.responses.create(model="demo", input="my name is Ada")

    # when
    second = client.responses.create(model="demo", input="who am I?", previous_response_id=first.id)

    # then
    assert 'Before that you said: "my name is Ada".' in second.output_text
    assert "exchanged 2 message(s)" in second.output_text
    assert second.previous_response_id == first.id


def test_branches_from_one_response_do_not_see_each_other(client):
    # given
    root = client.responses.create(model="demo", input="root")
    client.responses.create(model="demo", input="left branch", previous_response_id=root.id)

    # when
    right = client.responses.create(
        model="demo", input="right branch", previous_response_id=root.id
    )

    # then
    assert 'Before that you said: "root".' in right.output_text
    assert "exchanged 2 message(s)" in right.output_text


def test_conversation_keeps_memory_across_responses(client):
    # given
    client.responses.create(model="demo", input="first in conv", conversation="conv_team42")

    # when
    second = client.responses.create(
        model="demo", input="second", conversation={"id": "conv_team42"}
    )

    # then
    assert 'Before that you said: "first in conv".' in second.output_text
    assert second.conversation.id == "conv_team42"


def test_instructions_metadata_and_user_are_echoed(client):
    # when
    response = client.responses.create(
        model="demo", input="hi", instructions="Be brief.", metadata={"ticket": "T-1"}, user="u-7"
    )

    # then
    retrieved = client.responses.retrieve(response.id)
    assert retrieved.instructions == "Be brief."
    assert retrieved.metadata == {"ticket": "T-1"}
    assert retrieved.user == "u-7"


def test_unknown_previous_response_id_is_not_found(client):
    # when
    with pytest.raises(openai.NotFoundError) as error:
        client.responses.create(model="demo", input="hi", previous_response_id="resp_" + "0" * 32)

    # then
    assert error.value.body["param"] == "previous_response_id"


def test_store_false_responses_cannot_be_retrieved_or_continued(client):
    # given
    response = client.responses.create(model="demo", input="secret", store=False)
    assert response.output_text.startswith('You said: "secret".')

    # then
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="demo", input="more", previous_response_id=response.id)


def test_agent_tool_calls_appear_as_output_items(client):
    # when
    response = client.responses.create(model="demo", input="call tool")

    # then
    assert [item.type for item in response.output] == [
        "function_call",
        "function_call_output",
        "message",
    ]
    assert response.output[0].name == "get_weather"
    assert response.output[1].output == "sunny in Oslo"
    assert response.output_text == "The weather tool says: sunny in Oslo"


def test_streamed_tool_calls_are_announced_and_finished(client):
    # when
    with client.responses.stream(model="demo", input="call tool") as stream:
        events = list(stream)
        final = stream.get_final_response()

    # then
    added = [event.item.type for event in events if event.type == "response.output_item.added"]
    assert added == ["function_call", "function_call_output", "message"]
    assert [item.type for item in final.output] == added
    assert final.output[0].arguments == '{"city": "Oslo"}'


def test_an_agent_failure_yields_a_failed_response(client):
    # when
    response = client.responses.create(model="demo", input="fail")

    # then
    assert response.status == "failed"
    assert response.error.code == "server_error"
    assert "scripted failure" not in response.error.message
    assert client.responses.retrieve(response.id).status == "failed"


def test_an_agent_failure_mid_stream_ends_with_response_failed(client):
    # when
    events = list(client.responses.create(model="demo", input="fail midway", stream=True))

    # then
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "server_error"
    assert "response.output_item.done" in [event.type for event in events]
    assert client.responses.retrieve(events[-1].response.id).status == "failed"


def test_a_failure_before_the_first_token_streams_response_failed(client):
    # when
    events = list(client.responses.create(model="demo", input="fail", stream=True))

    # then
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.failed",
    ]


def test_a_stream_the_client_leaves_is_stored_as_cancelled(live_server_url, raw_api_key):
    # given
    body = {"model": "demo", "input": "sleep 2", "stream": True}
    headers = {"Authorization": f"Bearer {raw_api_key}"}

    # when: the client reads the first event, then hangs up
    with httpx.stream(
        "POST", f"{live_server_url}/v1/responses", json=body, headers=headers
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break

    # then
    deadline = time.monotonic() + 10
    while not Run.objects.filter(status__in=Run.TERMINAL_STATUSES).exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    run = Run.objects.get()
    assert run.status == "cancelled"
    assert run.output_messages == []
