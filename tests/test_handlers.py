"""Django's handler for the machine routes (afhost.handlers.ApiHandler): a client that leaves
cancels the view, as under Django's own handler, and so does a server that stops; the request
signals reach every receiver but Django's own tidying, which has nothing to do there."""

import asyncio
import gc
import json

import pytest
from django.core import signals

from afhost.handlers import ApiHandler, others_listen
from afhost.models import Run
from tests.asgi import CreateCall


async def _until_running() -> None:
    while not await Run.objects.filter(status=Run.Status.IN_PROGRESS).aexists():  # noqa: ASYNC110 (a row another thread writes)
        await asyncio.sleep(0.02)


@pytest.mark.django_db(transaction=True)  # the run is stored from a thread of its own
def test_a_client_that_leaves_a_blocking_create_cancels_its_run(api_key_factory):
    # given: a create whose agent takes 5 s
    _, raw_key = api_key_factory()
    client = CreateCall(raw_key, "sleep 5")

    async def request():
        await ApiHandler()(client.scope, client.receive, client.send)
        return asyncio.current_task().cancelling()

    async def scenario():
        answer = asyncio.create_task(request())
        await _until_running()
        client.leave.set()
        return await asyncio.wait_for(answer, 3)

    # when
    cancelling = asyncio.run(scenario())

    # then: the handler returned at once, answering nothing, its task not left cancelling;
    # the run is stored as cancelled
    assert client.sent == []
    assert cancelling == 0
    assert Run.objects.get().status == Run.Status.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_a_server_that_stops_cancels_the_view(api_key_factory):
    # given
    _, raw_key = api_key_factory()
    client = CreateCall(raw_key, "sleep 5")

    async def scenario():
        answer = asyncio.create_task(ApiHandler()(client.scope, client.receive, client.send))
        await _until_running()
        answer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(answer, 3)

    # when
    asyncio.run(scenario())

    # then: the cancellation went on to the server; the run is stored as cancelled
    assert Run.objects.get().status == Run.Status.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_a_client_that_leaves_once_answered_is_no_error(api_key_factory):
    # given: a client that hangs up as the last byte of its answer is sent
    _, raw_key = api_key_factory()
    client = CreateCall(raw_key, "hello")
    send = client.send

    async def send_then_leave(message: dict) -> None:
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            client.leave.set()
            await asyncio.sleep(0)  # the disconnect is heard before the handler ends

    errors = []

    async def scenario():
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: errors.append(context)
        )
        await ApiHandler()(client.scope, client.receive, send_then_leave)
        await asyncio.sleep(0.05)
        gc.collect()  # an exception nobody retrieved would be reported here

    # when
    asyncio.run(scenario())

    # then: answered; the disconnect cancelled nothing, and went unhandled nowhere
    assert client.sent[0]["status"] == 200
    assert json.loads(client.sent[1]["body"])["status"] == "completed"
    assert errors == []


def test_only_djangos_tidying_hears_the_request_signals_here():
    # Django's own receivers have nothing to tidy on the event loop: the API skips them
    assert not others_listen(signals.request_started)
    assert not others_listen(signals.request_finished)


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.django_db(transaction=True)
def test_a_receiver_of_the_request_signals_hears_every_api_request(api_key_factory, kind):
    # given: a receiver of both signals, of a project's own
    _, raw_key = api_key_factory()
    heard = []

    def receiver(signal, **kwargs):
        heard.append(signal)

    async def async_receiver(signal, **kwargs):
        heard.append(signal)

    listening = receiver if kind == "sync" else async_receiver
    client = CreateCall(raw_key, "hello")
    for signal in (signals.request_started, signals.request_finished):
        signal.connect(listening)

    # when
    try:
        asyncio.run(ApiHandler()(client.scope, client.receive, client.send))
    finally:
        for signal in (signals.request_started, signals.request_finished):
            signal.disconnect(listening)

    # then: answered, and heard once each, as Django's own handler would send them
    assert client.sent[0]["status"] == 200
    assert heard == [signals.request_started, signals.request_finished]
