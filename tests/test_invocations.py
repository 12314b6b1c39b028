"""The Invocations protocol of Azure AI hosted agents, live: POST /invocations (blocking,
streamed, long-running), the status and cancel of a long-running invocation, and
/invocations_ws, against a real server (and a real worker for long-running ones)."""

import asyncio
import json
import threading
import time
import uuid
from datetime import timedelta

import httpx
import pytest
import websockets
from django.test import Client
from django.utils import timezone

from afhost.models import ApiKey, Conversation, Run
from linking.models import Identity
from tests.test_delivery import PRIVATE, link_to_telegram

FIRST_ANSWER = (
    'You said: "hi". That is the first thing you told me. We have exchanged 1 message(s) so far.'
)


@pytest.fixture
def invoke(live_server_url, raw_api_key):
    """POST /invocations as a caller with its own key."""

    def post(body, *, session=None, headers=None, **kwargs):
        params = {} if session is None else {"agent_session_id": session}
        return httpx.post(
            f"{live_server_url}/invocations",
            params=params,
            headers={"Authorization": f"Bearer {raw_api_key}", **(headers or {})},
            timeout=30,
            **({"json": body} if not isinstance(body, bytes) else {"content": body}),
            **kwargs,
        )

    return post


def _get(live_server_url, raw_api_key, path, method="GET"):
    return httpx.request(
        method, f"{live_server_url}{path}", headers={"Authorization": f"Bearer {raw_api_key}"}
    )


def _frames(text):
    """(event, data) of each SSE frame, comments left out."""
    frames = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if lines:
            frames.append((lines["event"], json.loads(lines["data"])))
    return frames


def test_an_invocation_answers_with_the_agents_text_and_names_itself_and_its_session(invoke):
    response = invoke({"message": "hi"}, headers={"x-agent-invocation-id": "inv-1.a:b_c"})

    assert response.status_code == 200
    assert response.json() == {"response": FIRST_ANSWER}
    assert response.headers["x-agent-invocation-id"] == "inv-1.a:b_c"
    assert uuid.UUID(response.headers["x-agent-session-id"])


@pytest.mark.parametrize("value", ["has space", "x" * 257, "ünïcode"])
def test_an_invalid_invocation_or_session_id_is_replaced_by_a_new_one(invoke, value):
    response = invoke(
        {"message": "hi"},
        session=value,
        headers={"x-agent-invocation-id": value.encode()},
    )

    assert response.status_code == 200
    assert uuid.UUID(response.headers["x-agent-invocation-id"])
    assert uuid.UUID(response.headers["x-agent-session-id"])


def test_a_container_session_is_the_default_session_as_in_foundry(
    live_server_factory, live_db, raw_api_key
):
    url = live_server_factory(FOUNDRY_AGENT_SESSION_ID="sandbox-7")
    headers = {"Authorization": f"Bearer {raw_api_key}"}

    first = httpx.post(f"{url}/invocations", headers=headers, json={"message": "hi"})
    second = httpx.post(f"{url}/invocations", headers=headers, json={"message": "again"})

    assert first.headers["x-agent-session-id"] == second.headers["x-agent-session-id"]
    assert first.headers["x-agent-session-id"] == "sandbox-7"
    assert 'Before that you said: "hi".' in second.json()["response"]


def test_a_session_remembers_its_earlier_turns(invoke):
    invoke({"message": "hi"}, session="s-remember")

    response = invoke({"message": "again"}, session="s-remember")

    assert response.headers["x-agent-session-id"] == "s-remember"
    assert response.json()["response"].startswith('You said: "again". Before that you said: "hi".')


def test_each_caller_has_sessions_of_its_own(invoke, live_server_url, api_key_factory):
    invoke({"message": "hi"}, session="shared-name")

    other = httpx.post(
        f"{live_server_url}/invocations",
        params={"agent_session_id": "shared-name"},
        headers={"Authorization": f"Bearer {api_key_factory('other')[1]}"},
        json={"message": "hi"},
    )

    assert other.json() == {"response": FIRST_ANSWER}


def test_a_streamed_invocation_sends_deltas_then_done(invoke):
    response = invoke({"message": "hi", "stream": True}, session="s-stream")

    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    frames = _frames(response.text)
    assert {event for event, _ in frames[:-1]} == {"delta"}
    assert "".join(data["text"] for _, data in frames[:-1]) == FIRST_ANSWER
    assert frames[-1] == ("done", {"session_id": "s-stream"})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "Expecting value: line 1 column 1 (char 0)"),
        ([1, 2], "The invocation must be a JSON object."),
        ({}, "message must be a string."),
        ({"message": 42}, "message must be a string."),
        ({"message": "hi", "stream": "yes"}, "stream must be a boolean."),
        ({"message": "hi", "options": []}, "options must be an object."),
        (
            {"message": "hi", "options": {"instructions": "be rude", "tools": []}},
            "Invocations options cannot set agent-controlled fields: instructions, tools.",
        ),
        (
            {"message": "hi", "options": {"store": False}},
            "prepare_options cannot set host-controlled fields: store.",
        ),
        (
            {"message": "hi", "background": True, "stream": True},
            "A long-running invocation cannot be streamed; poll it instead.",
        ),
        ({"message": "a\u0000b"}, "The invocation holds characters that cannot be stored (NUL)."),
    ],
)
def test_a_bad_body_gets_a_400_with_microsofts_message(invoke, body, message):
    response = invoke(body)

    assert response.status_code == 400
    assert response.json() == {"error": message}
    assert Run.objects.count() == 0


def test_a_large_invocation_is_answered(invoke):
    response = invoke({"message": "long " * 20_000, "ignored": list(range(20_000))})

    assert response.status_code == 200
    assert response.json()["response"].startswith('You said: "long long')


def test_chat_options_reach_the_agent(invoke):
    response = invoke({"message": "hi", "options": {"temperature": 0.5}})

    assert response.status_code == 200
    assert Run.objects.get().options == {"temperature": 0.5}


def test_an_agent_failure_is_a_500_with_a_readable_reason(invoke):
    response = invoke({"message": "fail"})

    assert response.status_code == 500
    assert response.json() == {"error": "The agent failed to produce a response."}
    assert Run.objects.get().status == "failed"


def test_an_agent_failure_midway_through_a_stream_ends_it_with_an_error_frame(invoke):
    frames = _frames(invoke({"message": "fail midway", "stream": True}).text)

    assert frames[-1] == (
        "error",
        {
            "message": "The agent failed to produce a response.",
            "code": "invocation_failed",
            "status": 500,
        },
    )


def test_a_caller_without_a_key_is_refused(live_server_url):
    response = httpx.post(f"{live_server_url}/invocations", json={"message": "hi"})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


def test_two_turns_at_once_in_one_session_are_both_answered_one_after_the_other(invoke):
    answers = {}

    def turn(message):
        answers[message] = invoke({"message": message}, session="s-busy").json()["response"]

    first = threading.Thread(target=turn, args=("sleep 1",))
    first.start()
    deadline = time.monotonic() + 10
    while not Run.objects.filter(status="in_progress").exists():  # the first has the session
        assert time.monotonic() < deadline
        time.sleep(0.02)
    turn("second")
    first.join()

    assert answers["sleep 1"] == "done sleeping"
    assert answers["second"].startswith('You said: "second". Before that you said: "sleep 1".')
    runs = Run.objects.order_by("started_at")
    assert runs[0].completed_at <= runs[1].started_at


def test_a_long_running_invocation_is_polled_until_it_completes(
    invoke, live_server_url, raw_api_key, worker
):
    response = invoke(
        {"message": "hi", "background": True}, headers={"x-agent-invocation-id": "long-1"}
    )

    assert response.status_code == 202
    assert response.json() == {"invocation_id": "long-1", "status": "running"}
    assert response.headers["location"] == "/invocations/long-1"
    deadline = time.monotonic() + 30
    while (status := _get(live_server_url, raw_api_key, "/invocations/long-1").json())[
        "status"
    ] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status == {"invocation_id": "long-1", "status": "completed", "output": FIRST_ANSWER}


def test_a_long_running_invocation_is_cancelled_while_it_runs(
    invoke, live_server_url, raw_api_key, worker
):
    invoke({"message": "sleep 5", "background": True}, headers={"x-agent-invocation-id": "long-2"})
    deadline = time.monotonic() + 30
    while Run.objects.get().status != "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.05)

    cancel = _get(live_server_url, raw_api_key, "/invocations/long-2/cancel", method="POST")
    again = _get(live_server_url, raw_api_key, "/invocations/long-2/cancel", method="POST")

    assert cancel.json() == {"invocation_id": "long-2", "status": "cancelled"}
    assert again.json() == {"invocation_id": "long-2", "status": "cancelled"}
    assert _get(live_server_url, raw_api_key, "/invocations/long-2").json() == {
        "invocation_id": "long-2",
        "status": "cancelled",
    }


def test_a_finished_invocation_cannot_be_cancelled(invoke, live_server_url, raw_api_key):
    invoke({"message": "hi"}, headers={"x-agent-invocation-id": "done-1"})

    cancel = _get(live_server_url, raw_api_key, "/invocations/done-1/cancel", method="POST")

    assert cancel.status_code == 200
    assert cancel.json() == {
        "invocation_id": "done-1",
        "status": "completed",
        "error": "invocation already completed",
    }
    assert _get(live_server_url, raw_api_key, "/invocations/done-1").json()["output"] == (
        FIRST_ANSWER
    )


def test_a_failed_long_running_invocation_reports_why(invoke, live_server_url, raw_api_key, worker):
    invoke({"message": "fail", "background": True}, headers={"x-agent-invocation-id": "bad-1"})
    deadline = time.monotonic() + 30
    while (status := _get(live_server_url, raw_api_key, "/invocations/bad-1").json())[
        "status"
    ] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)

    assert status == {
        "invocation_id": "bad-1",
        "status": "failed",
        "error": "The agent failed to produce a response.",
    }


def test_an_unknown_or_someone_elses_invocation_is_not_found(
    invoke, live_server_url, api_key_factory
):
    invoke({"message": "hi"}, headers={"x-agent-invocation-id": "mine"})
    other_key = api_key_factory("other")[1]

    for path in ("/invocations/mine", "/invocations/nope", "/invocations/mine/cancel"):
        method = "POST" if path.endswith("cancel") else "GET"
        response = _get(live_server_url, other_key, path, method=method)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        assert response.headers["x-agent-invocation-id"] == path.split("/")[2]


def test_only_a_trusted_key_may_push_an_invocations_answer_to_a_chat(invoke):
    response = invoke({"message": "hi", "response_target": "telegram:42"})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "untrusted_response_target"


def test_an_invocation_is_reached_through_djangos_test_client_with_the_security_headers(
    api_key_factory, live_db
):
    _, key = api_key_factory()

    response = Client().post(
        "/invocations",
        {"message": "hi"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )

    assert response.status_code == 200
    assert response.json() == {"response": FIRST_ANSWER}
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"


# --- /invocations_ws --------------------------------------------------------------------------


def _block_the_key() -> None:
    """An operator blocks the identity of the test's (only) API key."""
    api_key = ApiKey.objects.get()
    Identity.objects.create(
        channel="api",
        native_id=f"key.{api_key.public_id}",
        isolation_key=f"api:key.{api_key.public_id}",
    ).block(by="an operator")


def _ws_url(base_url, path="/invocations_ws"):
    return base_url.replace("http://", "ws://") + path


async def _turn(ws, message):
    await ws.send(json.dumps({"message": message}))
    deltas = []
    while (frame := json.loads(await ws.recv()))["type"] == "delta":
        deltas.append(frame["text"])
    return "".join(deltas), frame


def _ws_session(url, key):
    return websockets.connect(
        _ws_url(url, "/invocations_ws?agent_session_id=ws-1"),
        additional_headers={"Authorization": f"Bearer {key}"},
    )


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
def test_invocations_over_a_websocket_share_one_session(
    live_server_factory, live_db, raw_api_key, server
):
    url = live_server_factory(server)

    async def talk():
        async with _ws_session(url, raw_api_key) as ws:
            first = await _turn(ws, "hi")
            second = await _turn(ws, "again")
            await ws.send("not json")
            error = json.loads(await ws.recv())
            third = await _turn(ws, "third")
        return first, second, error, third

    first, second, error, third = asyncio.run(talk())

    assert first[0] == FIRST_ANSWER
    assert first[1]["type"] == "done"
    assert first[1]["session_id"] == "ws-1"
    assert second[0].startswith('You said: "again". Before that you said: "hi".')
    assert error == {
        "type": "error",
        "message": "Expecting value: line 1 column 1 (char 0)",
        "code": "invalid_request",
        "status": 400,
    }
    assert third[0].startswith('You said: "third".')
    assert {run.invocation_id for run in Run.objects.all()} == {
        first[1]["invocation_id"],
        second[1]["invocation_id"],
        third[1]["invocation_id"],
    }


def test_a_websocket_without_a_key_is_closed_with_4401(live_server_url, live_db):
    async def connect():
        async with websockets.connect(_ws_url(live_server_url)) as ws:
            refusal = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        return refusal, closed.value.rcvd.code

    refusal, code = asyncio.run(connect())

    assert refusal["status"] == 401
    assert code == 4401


def test_a_websocket_client_that_leaves_mid_turn_cancels_it(live_server_url, raw_api_key):
    def running():
        deadline = time.monotonic() + 10
        while not Run.objects.filter(status="in_progress").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)

    async def leave_early():
        async with _ws_session(live_server_url, raw_api_key) as ws:
            await ws.send(json.dumps({"message": "sleep 3"}))
            await asyncio.to_thread(running)
            await ws.send(json.dumps({"message": "meanwhile"}))
            return json.loads(await ws.recv())

    busy = asyncio.run(leave_early())

    assert busy == {
        "type": "error",
        "message": "One invocation at a time: wait for the done frame.",
        "code": "busy",
        "status": 409,
    }
    deadline = time.monotonic() + 10
    while Run.objects.filter(status="cancelled").count() != 1:
        assert time.monotonic() < deadline, list(Run.objects.values_list("status", flat=True))
        time.sleep(0.05)
    assert Run.objects.count() == 1


def test_a_websocket_of_a_caller_linking_refuses_is_closed_with_4403(live_server_url, raw_api_key):
    _block_the_key()

    async def connect():
        async with _ws_session(live_server_url, raw_api_key) as ws:
            refusal = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        return refusal, closed.value.rcvd.code

    refusal, code = asyncio.run(connect())

    assert (refusal["code"], refusal["status"]) == ("access_denied", 403)
    assert code == 4403


def test_a_websocket_to_another_path_is_refused(live_server_url):
    async def connect():
        async with websockets.connect(_ws_url(live_server_url, "/elsewhere")):
            pass

    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(connect())

    assert refused.value.response.status_code == 403


def test_an_unknown_invocations_route_is_a_json_404(live_server_url, raw_api_key):
    response = _get(live_server_url, raw_api_key, "/invocations/docs/openapi.json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_home_page_lists_the_invocations_channel(live_server_url):
    page = httpx.get(live_server_url + "/").text

    assert f"{live_server_url}/invocations" in page
    assert "/invocations_ws" in page


def test_an_invocations_answer_is_pushed_to_the_callers_linked_telegram_chat(
    live_server_url, live_db, api_key_factory, telegram_api, worker
):
    api_key, raw_key = api_key_factory()
    link_to_telegram(api_key, PRIVATE)

    response = httpx.post(
        f"{live_server_url}/invocations",
        headers={"Authorization": f"Bearer {raw_key}", "x-agent-invocation-id": "pushed"},
        json={"message": "hi", "response_target": "telegram"},
    )

    assert response.status_code == 202
    deadline = time.monotonic() + 30
    while not telegram_api.calls_to("sendMessage"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [call] = telegram_api.calls_to("sendMessage")
    assert call.params["chat_id"] == PRIVATE
    assert "That is the first thing you told me." in call.params["text"]
    assert Identity.objects.filter(channel="api", native_id=f"key.{api_key.public_id}").exists()


# --- a Workflow target ------------------------------------------------------------------------


@pytest.fixture
def workflow_invoke(live_server_factory, live_db, raw_api_key):
    def serve(target):
        url = live_server_factory(AFHOST_TARGET=target)

        def post(body, *, session):
            return httpx.post(
                f"{url}/invocations",
                params={"agent_session_id": session},
                headers={"Authorization": f"Bearer {raw_api_key}"},
                json=body,
                timeout=30,
            )

        return post

    return serve


def test_a_workflows_outputs_are_answered_as_frames(workflow_invoke):
    invoke = workflow_invoke("tests.workflows:report")

    blocking = invoke({"message": "two words"}, session="wf-1")
    streamed = invoke({"message": "three more words", "stream": True}, session="wf-2")

    assert blocking.status_code == 200
    assert blocking.json() == {
        "output": [
            {"type": "output", "data": "2 words", "executor_id": "report"},
            {
                "type": "output",
                "data": {"words": 2, "shouted": "TWO WORDS"},
                "executor_id": "report",
            },
        ]
    }
    assert _frames(streamed.text) == [
        ("output", {"type": "output", "data": "3 words", "executor_id": "report"}),
        (
            "output",
            {
                "type": "output",
                "data": {"words": 3, "shouted": "THREE MORE WORDS"},
                "executor_id": "report",
            },
        ),
        ("done", {"session_id": "wf-2"}),
    ]


def test_a_workflow_without_output_answers_no_frames(workflow_invoke):
    invoke = workflow_invoke("tests.workflows:silent")

    response = invoke({"message": "anything"}, session="wf-silent")

    assert response.json() == {"output": []}


def test_a_workflow_asking_for_input_is_answered_by_the_sessions_next_invocation(
    workflow_invoke,
):
    invoke = workflow_invoke("tests.workflows:greeting")

    [asked] = invoke({"message": "hello"}, session="greet").json()["output"]
    [asked_again] = invoke({"message": "Ada"}, session="greet").json()["output"]
    [greeted] = invoke({"message": "blue"}, session="greet").json()["output"]

    assert (asked["type"], asked["data"]["prompt"]) == ("request_info", "What is your name?")
    assert asked["source_executor_id"] == "greeter"
    assert asked_again["data"]["prompt"] == "Nice to meet you, Ada. Your favourite colour?"
    assert greeted == {"type": "output", "data": "Hello Ada, blue it is!", "executor_id": "greeter"}


def test_a_session_busy_for_longer_than_a_turn_may_take_is_a_409(
    live_server_factory, live_db, api_key_factory
):
    # given: a turn of another process holds the session longer than a turn may take (5 s)
    api_key, raw_key = api_key_factory()
    Conversation.objects.create(
        channel="invocations",
        isolation_key=f"api:key.{api_key.public_id}",
        key="session:busy",
        lease_owner="another-process",
        lease_expires_at=timezone.now() + timedelta(minutes=1),
    )
    url = live_server_factory(AFHOST_RUN_TIMEOUT="5")

    # when: a blocking and a streamed invocation in it
    async def both():
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {raw_key}"}, timeout=30
        ) as http:
            return await asyncio.gather(
                *(
                    http.post("/invocations", params={"agent_session_id": "busy"}, json=body)
                    for body in ({"message": "hi"}, {"message": "hi", "stream": True})
                )
            )

    blocking, streamed = asyncio.run(both())

    # then: Microsoft's answers to a session another request advanced
    message = "Another request advanced this agent session; reload before retrying."
    assert blocking.status_code == 409
    assert blocking.json() == {"error": message}
    assert blocking.headers["x-agent-session-id"] == "busy"
    assert streamed.status_code == 200
    assert _frames(streamed.text) == [
        ("error", {"message": message, "code": "session_conflict", "status": 409})
    ]
    assert Run.objects.count() == 0


def test_a_caller_linking_refuses_is_refused_on_invocations_too(invoke, raw_api_key):
    _block_the_key()

    response = invoke({"message": "hi"})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "access_denied"
    assert Run.objects.count() == 0


def test_the_users_a_trusted_key_names_have_sessions_of_their_own(
    live_server_url, live_db, api_key_factory
):
    _, raw_key = api_key_factory(is_trusted=True)

    def invoke(user, message):
        return httpx.post(
            f"{live_server_url}/invocations",
            params={"agent_session_id": "same-session"},
            headers={"Authorization": f"Bearer {raw_key}", "x-agent-user-id": user},
            json={"message": message},
        ).json()["response"]

    invoke("alice", "hi")
    bobs = invoke("bob", "hi")
    alices = invoke("alice", "again")

    assert bobs == FIRST_ANSWER
    assert alices.startswith('You said: "again". Before that you said: "hi".')
