"""What one request may cost the web process that serves it: big bodies are parsed off the event
loop, and bodies are refused before they are read when their sender may not send them."""

import asyncio
import contextlib
import http.client
import json
import socket
import threading
from unittest import mock
from urllib.parse import urlsplit

import httpx
import pytest
from django.test import AsyncClient

from afhost.models import Run
from channels_app.responses import views


def test_a_large_body_is_parsed_while_other_requests_are_served(transactional_db, api_key_factory):
    # given: a create whose body (over 64 KB) takes until a small create has been answered
    # to parse
    _, raw_key = api_key_factory()
    parsing, small_answered = threading.Event(), threading.Event()
    overlapped = []
    parse_create = views.parse_create

    def slow_parse_create(body):
        if isinstance(body["input"], list):
            parsing.set()
            overlapped.append(small_answered.wait(timeout=5))
        return parse_create(body)

    large_input = [{"role": "user", "content": "x" * 100}] * 1000
    client = AsyncClient()

    async def create(body):
        return await client.post(
            "/v1/responses",
            body,
            content_type="application/json",
            headers={"Authorization": f"Bearer {raw_key}"},
        )

    async def scenario():
        large = asyncio.create_task(create({"model": "demo", "input": large_input}))
        await asyncio.to_thread(parsing.wait, 5)
        small = await create({"model": "demo", "input": "hi"})
        small_answered.set()
        return small, await large

    # when
    with mock.patch.object(views, "parse_create", slow_parse_create):
        small, large = asyncio.run(scenario())

    # then: the small create was answered while the large one was being parsed
    assert (small.status_code, large.status_code) == (200, 200)
    assert overlapped == [True]


@pytest.fixture
def guarded_url(live_server_factory, live_db):
    """uvicorn (which streams bodies to the application, as production runs it), with bodies
    of at most 64 KB that must arrive within half a second."""
    return live_server_factory(
        "uvicorn", AFHOST_MAX_REQUEST_BYTES="65536", AFHOST_BODY_TIMEOUT="0.5"
    )


def _exchange(url, path, headers, body=b"", *, chunked=()):
    """Send a request's head (and `body`, and `chunked` chunks), never the rest of what it
    declares; the response's status, headers and JSON body."""
    parsed = urlsplit(url)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode() + body)
        with contextlib.suppress(OSError):  # the server may stop reading, and close
            for chunk in chunked:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, dict(response.getheaders()), json.loads(response.read())


ROUTES = {
    "api": ("/v1/responses", lambda key: {"Authorization": f"Bearer {key}"}),
    "telegram": (
        "/telegram/webhook/",
        lambda key: {"X-Telegram-Bot-Api-Secret-Token": "test-webhook-secret"},
    ),
}


@pytest.mark.parametrize("route", ["api", "telegram"])
def test_an_anonymous_huge_body_is_refused_before_it_is_read(guarded_url, route):
    # when: a 300 MB body is announced and none of it sent
    path, _ = ROUTES[route]
    status, headers, body = _exchange(
        guarded_url, path, {"Content-Length": "300000000", "Content-Type": "application/json"}
    )

    # then
    assert status == 401
    assert headers["connection"] == "close"
    assert body == (
        {"ok": False, "description": "Unauthorized"}
        if route == "telegram"
        else {
            "error": {
                "message": mock.ANY,
                "type": "invalid_request_error",
                "param": None,
                "code": "missing_api_key",
            }
        }
    )


@pytest.mark.parametrize("route", ["api", "telegram"])
def test_a_body_announced_over_the_limit_is_refused_before_it_is_read(
    guarded_url, raw_api_key, route
):
    # when
    path, credentials = ROUTES[route]
    status, _, body = _exchange(
        guarded_url,
        path,
        {**credentials(raw_api_key), "Content-Length": "300000000"},
    )

    # then
    assert status == 413
    if route == "api":
        assert body["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("route", ["api", "telegram"])
def test_a_body_growing_past_the_limit_is_no_longer_read(guarded_url, raw_api_key, route):
    # when: a chunked body, of no announced length, that grows past the route's limit (64 KB
    # for the API here, 1 MB for Telegram's updates)
    path, credentials = ROUTES[route]
    chunks = 3 if route == "api" else 33
    status, _, body = _exchange(
        guarded_url,
        path,
        {**credentials(raw_api_key), "Transfer-Encoding": "chunked"},
        chunked=[b"x" * 32768] * chunks,
    )

    # then
    assert status == 413
    assert Run.objects.exists() is False


@pytest.mark.parametrize("route", ["api", "telegram"])
def test_a_body_that_takes_too_long_to_arrive_is_given_up(guarded_url, raw_api_key, route):
    # when: 10 of 100 bytes, and then nothing
    path, credentials = ROUTES[route]
    status, _, body = _exchange(
        guarded_url,
        path,
        {**credentials(raw_api_key), "Content-Length": "100"},
        b'{"input": ',
    )

    # then
    assert status == 408
    if route == "api":
        assert body["error"]["code"] == "request_timeout"


def test_requests_within_the_limits_pass_the_gates(guarded_url, raw_api_key, telegram_update):
    # when
    created = httpx.post(
        f"{guarded_url}/v1/responses",
        json={"model": "demo", "input": "hi"},
        headers={"Authorization": f"Bearer {raw_api_key}"},
    )
    update = httpx.post(
        f"{guarded_url}/telegram/webhook/",
        json=telegram_update("private_text"),
        headers={"X-Telegram-Bot-Api-Secret-Token": "test-webhook-secret"},
    )

    # then
    assert created.status_code == 200
    assert created.json()["status"] == "completed"
    assert update.status_code == 200
    assert update.json() == {"ok": True}


@pytest.mark.parametrize(
    "input_value",
    [
        [{"role": "user", "content": "x"}] * 300_000,  # the 9.7 MB create that froze a process
        [1] * 300_000,  # values without a container each
    ],
)
def test_a_body_of_far_too_many_values_is_refused_before_it_is_parsed(
    transactional_db, api_key_factory, input_value
):
    # given
    _, raw_key = api_key_factory()
    body = json.dumps({"model": "demo", "input": input_value})

    # when
    with mock.patch("channels_app.responses.schemas.json.loads") as loads:
        response = asyncio.run(
            AsyncClient().post(
                "/v1/responses",
                body,
                content_type="application/json",
                headers={"Authorization": f"Bearer {raw_key}"},
            )
        )

    # then
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "array_above_max_length"
    assert response.json()["error"]["param"] == "input"
    loads.assert_not_called()
    assert Run.objects.exists() is False
