"""The webhook view: authenticate, store, acknowledge. Processing is tested elsewhere."""

import pytest

from channels_app.telegram.models import TelegramChat, TelegramUpdate


def test_it_stores_an_update_and_queues_its_chat(telegram_inbox, telegram_update):
    # when
    response = telegram_inbox.post(telegram_update("private_text", update_id=42))

    # then
    assert response.status_code == 200
    update = TelegramUpdate.objects.get()
    assert (update.update_id, update.status, update.chat.chat_id) == (42, "pending", 1111111)
    assert telegram_inbox.queued == [update.chat.pk]


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
