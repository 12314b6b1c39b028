"""Server-sent event streams, live: many at once on one web process, and kept alive while
their run is quiet."""

import asyncio
import json

import httpx
import pytest
from openai import OpenAI

from tests.conftest import sdk_client


def _sse_events(text: str) -> list[dict]:
    return [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


async def _resume(http: httpx.AsyncClient, response_id: str) -> list[dict]:
    async with http.stream(
        "GET", f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": "0"}
    ) as response:
        assert response.status_code == 200, await response.aread()
        return _sse_events((await response.aread()).decode())


async def _readiness_while(http: httpx.AsyncClient, streams: asyncio.Future) -> list[int]:
    statuses = []
    while not streams.done():
        statuses.append((await http.get("/readyz")).status_code)
        await asyncio.sleep(0.1)
    return statuses


def test_two_hundred_resumed_streams_share_a_small_pool(live_server_factory, raw_api_key, worker):
    # given: a web process with one pooled connection, and a background run that sleeps
    url = live_server_factory(DATABASE_POOL_SIZE="1", DATABASE_POOL_TIMEOUT="5")
    client = OpenAI(base_url=f"{url}/v1", api_key=raw_api_key, max_retries=0, timeout=30)
    created = client.responses.create(model="demo", input="sleep 2", background=True, stream=True)
    response_id = next(iter(created)).response.id
    created.close()

    async def scenario():
        async with httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {raw_api_key}"},
            timeout=30,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        ) as http:
            streams = asyncio.gather(*(_resume(http, response_id) for _ in range(200)))
            readiness = await _readiness_while(http, streams)
            return await streams, readiness

    # when: 200 clients resume its stream at once
    results, readiness = asyncio.run(scenario())

    # then: every one follows it to its end, and the process stays ready meanwhile
    for events in results:
        assert events[0]["sequence_number"] == 1
        assert [e["sequence_number"] for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["type"] == "response.completed"
        assert events[-1]["response"]["output"][0]["content"][0]["text"] == "done sleeping"
    assert readiness
    assert set(readiness) == {200}


@pytest.fixture
def quiet_streams(live_server_factory, raw_api_key, worker):
    """A live server that keeps quiet streams alive every 0.1 s: its URL and an SDK client."""
    url = live_server_factory(AFHOST_SSE_KEEPALIVE="0.1")
    return url, sdk_client(url, raw_api_key)


def _raw_stream(url, raw_api_key, method, path, body=None):
    with httpx.stream(
        method,
        url + path,
        json=body,
        headers={"Authorization": f"Bearer {raw_api_key}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        return response.read().decode()


def _quiet_before_the_answer(text):
    """The SSE comments between the stream's lifecycle events and the answer's first word."""
    before_answer = text.split("event: response.output_item.added")[0]
    return before_answer.split("event: response.in_progress")[-1].count(": keep-alive\n\n")


@pytest.mark.parametrize("background", [False, True])
def test_a_quiet_created_stream_is_kept_alive(quiet_streams, raw_api_key, background):
    # given
    url, client = quiet_streams
    body = {"model": "demo", "input": "sleep 1", "stream": True, "background": background}

    # when
    text = _raw_stream(url, raw_api_key, "POST", "/v1/responses", body)

    # then: comments while the model was quiet, and a stream the SDK still reads strictly
    assert _quiet_before_the_answer(text) >= 3
    events = list(client.responses.create(**body))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "done sleeping"


def test_a_quiet_resumed_stream_is_kept_alive(quiet_streams, raw_api_key):
    # given
    url, client = quiet_streams
    created = client.responses.create(model="demo", input="sleep 1", background=True, stream=True)
    response_id = next(iter(created)).response.id
    created.close()

    # when
    text = _raw_stream(
        url, raw_api_key, "GET", f"/v1/responses/{response_id}?stream=true&starting_after=0"
    )

    # then
    assert _quiet_before_the_answer(text) >= 3
    resumed = list(client.responses.retrieve(response_id, stream=True, starting_after=0))
    assert resumed[-1].response.output_text == "done sleeping"
