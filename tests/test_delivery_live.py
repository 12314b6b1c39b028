"""Delivery, live: the official openai SDK asks a real daphne server for a push, a real worker
(`manage.py worker`) runs the run and pushes its answer to the fake Bot API on loopback, which
fails, throttles, or answers slowly on cue; one worker is killed mid-push."""

import time

import openai
import pytest

from afhost.models import Run
from delivery.models import DeliveryTask
from delivery.services import INTERRUPTED
from tests.test_delivery import PRIVATE, _answer, _attempts, link_to_telegram

ECHO = "<b>You:</b> hello there"


def _wait_for(condition, timeout=15, message="condition not met in time"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, message() if callable(message) else message
        time.sleep(0.05)
    return result


def _tasks():
    return list(DeliveryTask.objects.values_list("phase", "status", "attempts", "last_error"))


def _ended(count=1):
    """The delivery tasks, once `count` of them have ended."""

    def ended():
        tasks = list(DeliveryTask.objects.order_by("pk"))
        return tasks if sum(task.is_terminal for task in tasks) >= count else None

    return _wait_for(ended, message=_tasks)


@pytest.fixture
def linked_client(live_db, api_key_factory, openai_client_factory):
    """The openai SDK, for a key whose caller is linked to the Telegram user PRIVATE."""

    def make(*, trusted=False):
        api_key, raw_key = api_key_factory(is_trusted=trusted)
        link_to_telegram(api_key, PRIVATE)
        return openai_client_factory(raw_key)

    return make


@pytest.fixture
def slow_send_message(telegram_api):
    """Make Telegram answer sendMessage late (it takes the message at once)."""

    def slow(seconds):
        telegram_api.set_latency(seconds, method="sendMessage")

    yield slow
    telegram_api.set_latency(0, method="sendMessage")


def _push(client, target="all_linked", **body):
    response = client.responses.create(
        model="demo", input="hello there", extra_body={"response_target": target}, **body
    )
    assert response.status == "queued"
    return response


def test_a_push_that_fails_twice_is_sent_on_its_third_attempt(
    linked_client, telegram_api, cluster_factory
):
    # given
    cluster_factory(DELIVERY_BACKOFF="0.1")
    telegram_api.fail_next("sendMessage", 500, "Internal Server Error", times=2)

    # when
    response = _push(linked_client())

    # then
    [task] = _ended()
    assert (task.status, task.attempts) == ("sent", 3)
    error = "Telegram unreachable: NetworkError: Internal Server Error"
    assert _attempts(task) == [(1, "retry", error), (2, "retry", error), (3, "sent", "")]
    assert telegram_api.sent_texts(PRIVATE) == [_answer()]
    assert task.run.public_id.hex == response.id.removeprefix("resp_")


def test_a_push_waits_as_long_as_telegram_asks(linked_client, telegram_api, cluster_factory):
    # given
    cluster_factory()
    telegram_api.fail_next(
        "sendMessage", 429, "Too Many Requests: retry after 2", parameters={"retry_after": 2}
    )

    # when
    _push(linked_client())

    # then
    [task] = _ended()
    assert (task.status, task.attempts) == ("sent", 2)
    refused, sent = telegram_api.calls_to("sendMessage")
    assert sent.at - refused.at >= 2
    assert telegram_api.sent_texts(PRIVATE) == [_answer()]


def test_a_push_to_a_person_who_blocked_the_bot_fails_at_once(
    linked_client, telegram_api, cluster_factory
):
    # given
    cluster_factory(DELIVERY_BACKOFF="0.1")
    telegram_api.fail_next("sendMessage", 403, "Forbidden: bot was blocked by the user", times=3)

    # when
    _push(linked_client())

    # then
    [task] = _ended()
    reason = "Telegram refused: Forbidden: bot was blocked by the user"
    assert (task.status, task.attempts, task.last_error) == ("failed", 1, reason)
    assert _attempts(task) == [(1, "failed", reason)]
    assert len(telegram_api.calls_to("sendMessage")) == 1


def test_the_input_is_pushed_before_the_answer(linked_client, telegram_api, cluster_factory):
    # given
    cluster_factory()

    # when
    _push(linked_client(), {"kind": "all_linked", "echo_input": True})

    # then
    echo, answer = _ended(2)
    assert [(task.phase, task.status) for task in (echo, answer)] == [
        ("echo", "sent"),
        ("answer", "sent"),
    ]
    assert telegram_api.sent_texts(PRIVATE) == [ECHO, _answer()]


def test_a_push_in_flight_when_its_worker_is_killed_is_not_sent_again(
    linked_client, telegram_api, cluster_factory, slow_send_message
):
    # given: a worker with short leases pushes the echo, and Telegram is slow to answer
    lease = {"AFHOST_LEASE_SECONDS": "2"}
    dying = cluster_factory(**lease)
    slow_send_message(4)
    _push(linked_client(), {"kind": "all_linked", "echo_input": True})
    telegram_api.wait_for("sendMessage")

    # when: the worker dies before it hears back, and a new one starts
    dying.kill()
    slow_send_message(0)
    cluster_factory(**lease)

    # then: the echo (it arrived) is not sent again, the answer after it goes once
    echo, answer = _ended(2)
    assert (echo.phase, echo.status, echo.attempts, echo.last_error) == (
        "echo",
        "interrupted",
        1,
        INTERRUPTED,
    )
    assert _attempts(echo) == [(1, "interrupted", INTERRUPTED)]
    assert (answer.phase, answer.status, answer.attempts) == ("answer", "sent", 1)
    assert telegram_api.sent_texts(PRIVATE) == [ECHO, _answer()]


def test_a_push_waiting_to_retry_when_its_worker_is_killed_is_sent_once_by_the_next(
    linked_client, telegram_api, cluster_factory
):
    # given: a worker whose first attempt failed waits (1.5 to 4.5 s) to try again
    env = {"AFHOST_LEASE_SECONDS": "2", "DELIVERY_BACKOFF": "3"}
    dying = cluster_factory(**env)
    telegram_api.fail_next("sendMessage", 502, "Bad Gateway")
    _push(linked_client())
    _wait_for(lambda: DeliveryTask.objects.filter(status="pending", attempts=1).exists())

    # when
    dying.kill()
    cluster_factory(**env)

    # then
    [task] = _ended()
    assert (task.status, task.attempts) == ("sent", 2)
    assert [outcome for _, outcome, _ in _attempts(task)] == ["retry", "sent"]
    assert telegram_api.sent_texts(PRIVATE) == [_answer()]


def test_an_untrusted_key_may_not_name_a_chat(linked_client, telegram_api):
    # when
    with pytest.raises(openai.PermissionDeniedError) as refused:
        _push(linked_client(), f"telegram:{PRIVATE}")

    # then
    assert refused.value.status_code == 403
    assert (refused.value.body["param"], refused.value.body["code"]) == (
        "response_target",
        "untrusted_response_target",
    )
    assert Run.objects.exists() is False
    assert DeliveryTask.objects.exists() is False


def test_a_trusted_key_pushes_to_the_chat_it_names(linked_client, telegram_api, worker):
    # when
    _push(linked_client(trusted=True), "telegram:-100555:9")

    # then
    [task] = _ended()
    assert (task.status, task.identity, task.locator) == (
        "sent",
        None,
        {"chat_id": -100555, "thread_id": 9},
    )
    [call] = telegram_api.calls_to("sendMessage")
    assert (call.params["chat_id"], call.params["message_thread_id"]) == (-100555, 9)
    assert call.params["text"] == _answer()
