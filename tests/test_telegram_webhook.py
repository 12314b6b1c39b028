"""The webhook view: authenticate, store, acknowledge. Processing is tested elsewhere."""

from datetime import timedelta
from unittest import mock

import pytest
from django.db import OperationalError
from django.utils import timezone

from channels_app.telegram.models import TelegramChat, TelegramUpdate


def test_it_stores_an_update_and_queues_its_chat(telegram_inbox, telegram_update):
    # when
    response = telegram_inbox.post(telegram_update("private_text", update_id=42))

    # then
    assert response.status_code == 200
    update = TelegramUpdate.objects.get()
    assert (update.update_id, update.status, update.chat.chat_id) == (42, "pending", 1111111)
    assert telegram_inbox.queued == [
        ("channels_app.tasks.process_telegram_chat", (update.chat.pk,))
    ]


@pytest.mark.parametrize("secret", [None, "wrong-secret", ""])
def test_it_refuses_a_request_without_the_secret(telegram_inbox, telegram_update, secret):
    # when
    response = telegram_inbox.post(telegram_update("private_text"), secret=secret)

    # then
    assert response.status_code == 401
    assert TelegramUpdate.objects.exists() is False
    assert telegram_inbox.queued == []


def test_it_does_not_exist_without_a_bot_token(telegram_inbox, telegram_update, settings):
    settings.TELEGRAM_BOT_TOKEN = ""
    assert telegram_inbox.post(telegram_update("private_text")).status_code == 404
    assert TelegramUpdate.objects.exists() is False


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"message": {}}',
        b'{"update_id": "7"}',
        # what the database cannot store (PostgreSQL: NUL, lone surrogates)
        b'{"update_id": 8, "message": {"chat": {"id": 1, "type": "private"}, "text": "a\\u0000"}}',
        b'{"update_id": 9, "message": {"chat": {"id": 1, "type": "private"}, "text": "\\ud800"}}',
    ],
)
def test_it_rejects_malformed_updates(telegram_inbox, body):
    # when
    response = telegram_inbox.post(body)

    # then
    assert response.status_code == 400
    assert TelegramUpdate.objects.exists() is False


def test_a_duplicate_update_is_acknowledged_and_ignored(telegram_inbox, telegram_update):
    # given
    payload = telegram_update("private_text", update_id=77)
    telegram_inbox.post(payload)

    # when
    response = telegram_inbox.post(payload)

    # then
    assert response.status_code == 200
    assert TelegramUpdate.objects.count() == 1
    assert len(telegram_inbox.queued) == 1


def test_an_update_without_a_chat_is_acknowledged_and_recorded_as_ignored(
    telegram_inbox, telegram_update
):
    # when
    response = telegram_inbox.post(telegram_update("inline_query"))

    # then
    assert response.status_code == 200
    update = TelegramUpdate.objects.get()
    assert update.status == "ignored"
    assert "without a chat" in update.last_error
    assert telegram_inbox.queued == []
    assert TelegramChat.objects.exists() is False


_CHAT = b'"chat": {"id": 1, "type": "private"}'


@pytest.mark.parametrize(
    "body",
    [
        # ids outside PostgreSQL's bigint
        b'{"update_id": 9223372036854775808, "message": {' + _CHAT + b"}}",
        b'{"update_id": -9223372036854775809, "message": {' + _CHAT + b"}}",
        b'{"update_id": 10, "message": {"chat": {"id": 9223372036854775808, "type": "private"}}}',
        b'{"update_id": 11, "message": {"chat": {"id": -9223372036854775809, "type": "group"}}}',
        # numbers PostgreSQL's JSON does not have (Python's json accepts them)
        b'{"update_id": 12, "message": {' + _CHAT + b', "date": NaN}}',
        b'{"update_id": 13, "message": {' + _CHAT + b', "date": Infinity}}',
        b'{"update_id": 14, "message": {' + _CHAT + b', "date": -Infinity}}',
        b'{"update_id": 15, "message": {' + _CHAT + b', "date": 1e400}}',
        b'{"update_id": NaN, "message": {' + _CHAT + b"}}",
        # nesting past the recursion limit, and deep nesting the parser accepts
        b'{"update_id": 16, "message": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"update_id": 17, "message": {' + _CHAT + b', "x": ' + b"[" * 950 + b"]" * 950 + b"}}",
        b'{"update_id": 18, "message": {' + _CHAT + b', "x": ' + b"[" * 200 + b"]" * 200 + b"}}",
    ],
    ids=[
        "update_id-above-bigint",
        "update_id-below-bigint",
        "chat-id-above-bigint",
        "chat-id-below-bigint",
        "nan",
        "infinity",
        "minus-infinity",
        "float-overflow",
        "nan-update-id",
        "nesting-past-recursion-limit",
        "nesting-950",
        "nesting-200",
    ],
)
def test_it_rejects_updates_the_database_cannot_store_with_a_log_line(telegram_inbox, body, caplog):
    # when
    response = telegram_inbox.post(body)

    # then
    assert response.status_code == 400
    assert response.json()["ok"] is False
    assert TelegramUpdate.objects.exists() is False
    assert TelegramChat.objects.exists() is False
    assert any(
        record.name == "channels_app.telegram.views" and record.levelname == "WARNING"
        for record in caplog.records
    )


def test_an_unexpected_error_answers_json_with_a_log_line(telegram_inbox, telegram_update, caplog):
    # given
    failure = RuntimeError("the database went away")

    # when
    with mock.patch("channels_app.telegram.views.receive_update", side_effect=failure):
        response = telegram_inbox.post(telegram_update("private_text"))

    # then
    assert response.status_code == 500
    assert response.json() == {"ok": False, "description": "Internal error"}
    record = next(r for r in caplog.records if r.name == "channels_app.telegram.views")
    assert record.levelname == "ERROR"
    assert record.exc_info[1] is failure


def test_an_update_whose_queueing_fails_is_acknowledged_and_answered_by_the_sweeper(
    telegram_inbox, telegram_update, caplog, on_redis
):
    # given: Redis as the broker, down
    refused = ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    # when
    with mock.patch("channels_app.telegram.services.async_task", side_effect=refused):
        response = telegram_inbox.post(telegram_update("private_text"))
    TelegramUpdate.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=1))
    swept = telegram_inbox.sweep()

    # then
    assert response.status_code == 200
    assert TelegramUpdate.objects.get().status == TelegramUpdate.Status.PENDING
    assert swept == 1
    assert telegram_inbox.queued == [
        ("channels_app.tasks.process_telegram_chat", (TelegramChat.objects.get().pk,))
    ]
    assert "queueing telegram chat 1111111 failed; it is stored" in caplog.text


def test_an_oversized_update_is_refused_with_json(telegram_inbox, settings, caplog):
    # given
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024

    # when
    response = telegram_inbox.post(b'{"update_id": 19, "x": "' + b"a" * 2048 + b'"}')

    # then
    assert response.status_code == 413
    assert response.json()["ok"] is False
    assert TelegramUpdate.objects.exists() is False
    assert "oversized telegram update" in caplog.text


def test_an_update_that_finds_the_database_down_is_answered_503_to_be_retried(
    telegram_inbox, telegram_update
):
    # when
    with mock.patch(
        "channels_app.telegram.views.receive_update",
        side_effect=OperationalError("connection failed: Connection refused"),
    ):
        response = telegram_inbox.post(telegram_update("private_text"))

    # then
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response.json()["ok"] is False
