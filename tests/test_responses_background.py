"""Background runs execute in a real django-q2 cluster; the web process only queues them."""

import time

import openai
import pytest


def _wait_for(
    client, response_id, statuses=("completed", "failed", "cancelled", "incomplete"), timeout=20
):
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(response_id)
        if response.status in statuses:
            return response
        assert time.monotonic() < deadline, f"still {response.status}"
        time.sleep(0.05)


def test_background_run_is_queued_then_completed_by_the_worker(client, worker):
    # when
    created = client.responses.create(model="demo", input="in the background", background=True)

    # then
    assert created.status == "queued"
    assert created.background is True
    done = _wait_for(client, created.id)
    assert done.status == "completed"
    assert done.output_text.startswith('You said: "in the background".')


def test_background_run_continues_a_conversation(client, worker):
    # given
    first = client.responses.create(model="demo", input="remember me")

    # when
    created = client.responses.create(
        model="demo", input="again", previous_response_id=first.id, background=True
    )

    # then
    assert 'Before that you said: "remember me".' in _wait_for(client, created.id).output_text


def test_background_stream_follows_the_run_to_its_end(client, worker):
    # when
    events = list(
        client.responses.create(model="demo", input="bg stream", background=True, stream=True)
    )

    # then
    types = [event.type for event in events]
    assert types[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[-1].response.output_text.startswith('You said: "bg stream".')


def test_a_background_stream_resumes_after_a_cursor(client, worker):
    # given
    created = client.responses.create(model="demo", input="resume me", background=True, stream=True)
    first_events = []
    for event in created:
        first_events.append(event)
        if event.type == "response.output_text.delta":
            break
    created.close()
    cursor = first_events[-1].sequence_number

    # when
    resumed = list(
        client.responses.retrieve(first_events[0].response.id, stream=True, starting_after=cursor)
    )

    # then
    assert resumed[0].sequence_number == cursor + 1
    assert [event.sequence_number for event in resumed] == list(
        range(cursor + 1, cursor + 1 + len(resumed))
    )
    assert resumed[-1].type == "response.completed"
    text = "".join(
        e.delta for e in [*first_events, *resumed] if e.type == "response.output_text.delta"
    )
    assert text == resumed[-1].response.output_text


def test_the_stream_helper_resumes_a_finished_background_run(client, worker):
    # given
    created = client.responses.create(model="demo", input="helper", background=True, stream=True)
    response_id = next(iter(created)).response.id
    created.close()
    _wait_for(client, response_id)

    # when
    with client.responses.stream(response_id=response_id, starting_after=1) as stream:
        final = stream.get_final_response()

    # then
    assert final.output_text.startswith('You said: "helper".')


def test_cancelling_a_running_background_run_stops_it(client, worker):
    # given
    created = client.responses.create(model="demo", input="sleep 4", background=True)
    _wait_for(client, created.id, statuses=("in_progress",))

    # when
    cancelled = client.responses.cancel(created.id)

    # then
    assert cancelled.status == "cancelled"
    assert client.responses.cancel(created.id).status == "cancelled"
    time.sleep(3)
    after = client.responses.retrieve(created.id)
    assert after.status == "cancelled"
    assert after.completed_at is None  # OpenAI: only present when the status is completed
    assert after.output == []
    assert f"run {created.id.removeprefix('resp_')} was cancelled while running" in _uuid_dashless(
        worker.read_text()
    )


def _uuid_dashless(log: str) -> str:
    return log.replace("-", "")


def test_cancelling_a_completed_response_is_refused(client, worker):
    # given
    created = client.responses.create(model="demo", input="quick", background=True)
    _wait_for(client, created.id)

    # when
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.cancel(created.id)

    # then
    assert error.value.body["message"] == "Cannot cancel a completed response."


def test_deleting_an_in_flight_response_is_refused(client, worker):
    # given
    created = client.responses.create(model="demo", input="sleep 2", background=True)

    # when
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.delete(created.id)

    # then
    assert error.value.body["message"] == "Cannot delete an in-flight response."
    assert client.responses.cancel(created.id).status == "cancelled"
    client.responses.delete(created.id)
