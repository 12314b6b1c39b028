"""End to end: Telegram posts to the webhook of a live daphne server, a real django-q2 cluster
(two workers) answers, and the fake Bot API on loopback receives the replies."""

import time

import httpx
import pytest

from channels_app.telegram.models import TelegramUpdate
from channels_app.telegram.services import sweep_updates

SECRET = {"X-Telegram-Bot-Api-Secret-Token": "test-webhook-secret"}


@pytest.fixture
def post_update(live_server_url, live_db, telegram_api):
    def post(payload):
        response = httpx.post(f"{live_server_url}/telegram/webhook/", json=payload, headers=SECRET)
        assert response.status_code == 200, response.text
        return response

    return post


def _quoted(text):
    return text.split('"')[1]


def _wait_until_processed(count, timeout=20):
    deadline = time.monotonic() + timeout
    while TelegramUpdate.objects.filter(status="processed").count() < count:
        assert time.monotonic() < deadline, list(
            TelegramUpdate.objects.values_list("status", "last_error")
        )
        time.sleep(0.05)


def test_each_chat_is_answered_in_order_while_chats_proceed_in_parallel(
    post_update, telegram_api, telegram_update, worker
):
    # given
    chats = {1111111: "alice", 3333333: "carol"}
    updates = []
    for index in range(5):
        for chat_id, name in chats.items():
            payload = telegram_update("private_text", text=f"{name} {index}")
            payload["message"]["chat"]["id"] = payload["message"]["from"]["id"] = chat_id
            updates.append(payload)

    # when
    for payload in updates:
        post_update(payload)
    _wait_until_processed(10)

    # then
    for chat_id, name in chats.items():
        assert [_quoted(text) for text in telegram_api.sent_texts(chat_id)] == [
            f"{name} {i}" for i in range(5)
        ]


def test_a_redelivered_update_is_answered_once(post_update, telegram_api, telegram_update, worker):
    # given
    payload = telegram_update("private_text", text="only once")

    # when
    post_update(payload)
    post_update(payload)
    _wait_until_processed(1)

    # then
    assert len(telegram_api.sent_texts(1111111)) == 1
    assert TelegramUpdate.objects.count() == 1


def test_an_update_whose_processing_failed_is_answered_once_on_retry(
    post_update, telegram_api, telegram_update, worker
):
    # given: the first attempt fails however often it resends
    telegram_api.fail_next("sendMessage", 500, "Internal Server Error", times=4)
    post_update(telegram_update("private_text", text="persist"))
    deadline = time.monotonic() + 20
    while TelegramUpdate.objects.get().attempts == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert TelegramUpdate.objects.get().status == "pending"

    # when: the retry falls due and the sweeper hands the chat to a worker again
    TelegramUpdate.objects.update(next_attempt_at=TelegramUpdate.objects.get().created_at)
    assert sweep_updates() == 1
    _wait_until_processed(1)

    # then
    assert [_quoted(text) for text in telegram_api.sent_texts(1111111)] == ["persist"]
    update = TelegramUpdate.objects.get()
    assert (update.status, update.attempts, update.sent_parts) == ("processed", 1, 1)
