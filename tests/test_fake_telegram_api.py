"""The fake Telegram Bot API against a real python-telegram-bot ``Bot`` (no database)."""

from __future__ import annotations

import asyncio
import datetime as dtm
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import telegram
from telegram import InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, NetworkError, RetryAfter

from tests.fakes.telegram_api import Call, FakeTelegramApi

TOKEN = "123456:TEST-token_abc"


@pytest.fixture
def fake() -> Iterator[FakeTelegramApi]:
    with FakeTelegramApi(TOKEN) as api:
        yield api


def _bot(fake: FakeTelegramApi, token: str = TOKEN) -> telegram.Bot:
    return telegram.Bot(token, base_url=f"{fake.url}/bot", base_file_url=f"{fake.url}/file/bot")


def _run(fake: FakeTelegramApi, scenario: Callable[[telegram.Bot], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with _bot(fake) as bot:
            return await scenario(bot)

    return asyncio.run(main())


def _seconds(value: int | float | dtm.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def test_get_me(fake: FakeTelegramApi) -> None:
    me = _run(fake, lambda bot: bot.get_me())

    assert me.id == 123456
    assert me.is_bot
    assert me.username == "test_bot"
    assert me.can_join_groups
    assert [call.method for call in fake.calls] == ["getMe", "getMe"]  # initialize() + get_me()


def test_send_message_records_and_echoes_thread(fake: FakeTelegramApi) -> None:
    async def scenario(bot: telegram.Bot) -> tuple[telegram.Message, telegram.Message]:
        first = await bot.send_message(-1001234, "hello", message_thread_id=7)
        second = await bot.send_message(-1001234, "again")
        return first, second

    first, second = _run(fake, scenario)

    assert (first.message_id, second.message_id) == (1, 2)
    assert first.chat.type == "supergroup"
    assert first.message_thread_id == 7
    assert first.is_topic_message
    assert first.from_user.username == "test_bot"
    assert second.message_thread_id is None
    call = fake.calls_to("sendMessage")[0]
    assert call.params == {"chat_id": -1001234, "text": "hello", "message_thread_id": 7}
    assert fake.sent_texts() == ["hello", "again"]
    assert fake.sent_texts(chat_id=-1001234) == ["hello", "again"]
    assert fake.sent_texts(chat_id="-1001234") == ["hello", "again"]
    assert fake.sent_texts(chat_id=42) == []


def test_private_chat_and_text_starting_with_bracket(fake: FakeTelegramApi) -> None:
    message = _run(fake, lambda bot: bot.send_message(42, '["not", "json"]'))

    assert message.chat.type == "private"
    assert fake.sent_texts(42) == ['["not", "json"]']


def test_form_encoded_reply_markup_is_decoded(fake: FakeTelegramApi) -> None:
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("Yes", callback_data="yes")]])

    _run(fake, lambda bot: bot.send_message(42, "Sure?", reply_markup=markup))

    params = fake.calls_to("sendMessage")[0].params
    assert params["reply_markup"] == {
        "inline_keyboard": [[{"text": "Yes", "callback_data": "yes"}]]
    }


def test_json_body_is_accepted(fake: FakeTelegramApi) -> None:
    response = httpx.post(
        f"{fake.url}/bot{TOKEN}/sendMessage",
        json={"chat_id": "42", "text": "hi", "reply_markup": {"remove_keyboard": True}},
    )

    assert response.status_code == 200
    assert response.json()["result"]["text"] == "hi"
    params = fake.calls_to("sendMessage")[0].params
    assert params == {"chat_id": 42, "text": "hi", "reply_markup": {"remove_keyboard": True}}


def test_wrong_token_and_unknown_path(fake: FakeTelegramApi) -> None:
    async def main() -> None:
        async with _bot(fake, token="999:WRONG"):
            pass

    with pytest.raises(InvalidToken):
        asyncio.run(main())
    response = httpx.post(f"{fake.url}/bot999:WRONG/getMe")
    assert response.status_code == 401
    assert response.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    response = httpx.get(f"{fake.url}/nope")
    assert response.status_code == 404
    assert response.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
    assert fake.calls == []


def test_429_raises_retry_after(fake: FakeTelegramApi) -> None:
    fake.fail_next(
        "sendMessage", 429, "Too Many Requests: retry after 1", parameters={"retry_after": 1}
    )

    async def scenario(bot: telegram.Bot) -> telegram.Message:
        with pytest.raises(RetryAfter) as excinfo:
            await bot.send_message(42, "first")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert _seconds(excinfo.value.retry_after) == 1
        return await bot.send_message(42, "second")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PTBDeprecationWarning about int retry_after
        _run(fake, scenario)

    assert [call.failed for call in fake.calls_to("sendMessage")] == [True, False]
    assert fake.sent_texts() == ["second"]


@pytest.mark.parametrize(
    ("status", "description", "exception"),
    [
        (403, "Forbidden: bot was blocked by the user", Forbidden),
        (400, "Bad Request: can't parse entities: unclosed tag", BadRequest),
        (500, "Internal Server Error", NetworkError),
    ],
)
def test_injected_errors_raise_ptb_exceptions(
    fake: FakeTelegramApi, status: int, description: str, exception: type[Exception]
) -> None:
    fake.fail_next("sendMessage", status, description, times=2)

    async def scenario(bot: telegram.Bot) -> None:
        for _ in range(2):
            with pytest.raises(exception):
                await bot.send_message(42, "x")
        await bot.send_message(42, "ok")

    _run(fake, scenario)

    assert [call.failed for call in fake.calls_to("sendMessage")] == [True, True, False]


def test_get_updates_offset_semantics(fake: FakeTelegramApi) -> None:
    chat = {"id": 42, "type": "private"}
    for text in ("a", "b", "c"):
        fake.push_update({"message": {"message_id": 1, "date": 0, "chat": chat, "text": text}})

    async def scenario(bot: telegram.Bot) -> list[tuple[telegram.Update, ...]]:
        first = await bot.get_updates(limit=2)
        again = await bot.get_updates()
        after_confirm = await bot.get_updates(offset=first[-1].update_id + 1)
        started = time.monotonic()
        empty = await bot.get_updates(offset=after_confirm[-1].update_id + 1, timeout=30)
        assert time.monotonic() - started < 5  # long polling is capped at 1 s
        return [first, again, after_confirm, empty]

    first, again, after_confirm, empty = _run(fake, scenario)

    assert [u.message.text for u in first] == ["a", "b"]
    assert [u.update_id for u in again] == [1, 2, 3]
    assert [u.message.text for u in after_confirm] == ["c"]
    assert empty == ()
    assert fake.pending_updates == []
    assert fake.calls_to("getUpdates")[2].params == {"offset": 3}


def test_long_poll_wakes_up_on_push(fake: FakeTelegramApi) -> None:
    async def scenario(bot: telegram.Bot) -> tuple[telegram.Update, ...]:
        return await bot.get_updates(timeout=10)

    async def main() -> tuple[telegram.Update, ...]:
        async with _bot(fake) as bot:
            task = asyncio.create_task(scenario(bot))
            await asyncio.to_thread(fake.wait_for, "getUpdates")
            fake.push_update({"update_id": 100, "callback_query": _callback_query()})
            return await task

    updates = asyncio.run(main())

    assert [u.update_id for u in updates] == [100]
    assert updates[0].callback_query.data == "yes"


def _callback_query() -> dict[str, Any]:
    user = {"id": 42, "is_bot": False, "first_name": "Ann"}
    return {"id": "cq1", "from": user, "chat_instance": "ci", "data": "yes"}


def test_webhook_blocks_get_updates(fake: FakeTelegramApi) -> None:
    async def scenario(bot: telegram.Bot) -> telegram.WebhookInfo:
        await bot.set_webhook(
            "https://example.com/hook", secret_token="s3cret", allowed_updates=["message"]
        )
        info = await bot.get_webhook_info()
        with pytest.raises(Conflict, match="webhook is active"):
            await bot.get_updates()
        assert await bot.delete_webhook()
        assert await bot.get_updates() == ()
        return info

    info = _run(fake, scenario)

    assert info.url == "https://example.com/hook"
    assert info.pending_update_count == 0
    assert fake.calls_to("getUpdates")[0].failed
    assert fake.calls_to("setWebhook")[0].params["allowed_updates"] == ["message"]
    assert fake.webhook is None


def test_get_file_and_download(fake: FakeTelegramApi) -> None:
    content = bytes(range(256)) + b"\r\n--\r\n"
    fake.add_file("photo-1", content)

    async def scenario(bot: telegram.Bot) -> tuple[telegram.File, bytearray]:
        file = await bot.get_file("photo-1")
        data = await file.download_as_bytearray()
        with pytest.raises(BadRequest, match="Invalid file_id"):
            await bot.get_file("missing")
        return file, data

    file, data = _run(fake, scenario)

    assert bytes(data) == content
    assert file.file_size == len(content)
    assert file.file_path == f"{fake.url}/file/bot{TOKEN}/photos/photo-1.jpg"
    assert httpx.get(f"{fake.url}/file/bot{TOKEN}/photos/missing.jpg").status_code == 404


def test_multipart_upload_round_trip(fake: FakeTelegramApi) -> None:
    content = bytes(range(256)) * 4 + b"\r\n\r\n--"

    async def scenario(bot: telegram.Bot) -> bytearray:
        message = await bot.send_document(42, content, filename="blob.bin", caption="[x]")
        assert message.caption == "[x]"
        assert message.document.file_name == "blob.bin"
        file = await bot.get_file(message.document.file_id)
        return await file.download_as_bytearray()

    data = _run(fake, scenario)

    assert bytes(data) == content
    params = fake.calls_to("sendDocument")[0].params
    assert params["chat_id"] == 42
    assert params["document"].content == content


def test_edit_and_true_methods(fake: FakeTelegramApi) -> None:
    async def scenario(bot: telegram.Bot) -> list[Any]:
        return [
            await bot.edit_message_text("new", chat_id=42, message_id=5),
            await bot.edit_message_text("new", inline_message_id="inline-1"),
            await bot.send_chat_action(42, "typing"),
            await bot.answer_callback_query("cq1"),
            await bot.set_my_commands([("start", "Start")]),
            await bot.send_photo(42, "existing-file-id", caption="pic"),
        ]

    edited, inline, action, answered, commands, photo = _run(fake, scenario)

    assert edited.message_id == 5
    assert edited.edit_date is not None
    assert inline is True
    assert action is answered is commands is True
    assert photo.caption == "pic"
    assert photo.photo[0].file_id == "existing-file-id"


def test_wait_for_and_reset(fake: FakeTelegramApi) -> None:
    with pytest.raises(AssertionError, match="sendMessage"):
        fake.wait_for("sendMessage", timeout=0.1)
    _run(fake, lambda bot: bot.send_message(42, "x"))
    calls = fake.wait_for("sendMessage")
    assert isinstance(calls[0], Call)
    fake.fail_next("sendMessage", 500, "boom")
    fake.push_update({"update_id": 1})

    fake.reset()

    assert fake.calls == []
    assert fake.pending_updates == []
    _run(fake, lambda bot: bot.send_message(42, "y"))
    assert fake.sent_texts() == ["y"]


def test_latency_per_method_answers_late_and_records_on_arrival(fake: FakeTelegramApi) -> None:
    fake.set_latency(0.2, method="sendMessage")

    async def scenario(bot: telegram.Bot) -> tuple[float, float, float]:
        started = time.monotonic()
        await bot.get_me()
        got_me = time.monotonic()
        await asyncio.gather(bot.send_message(1, "a"), bot.send_message(2, "b"))
        return started, got_me, time.monotonic()

    started, got_me, sent = _run(fake, scenario)

    assert got_me - started < 0.15  # other methods keep no latency
    assert 0.2 <= sent - got_me < 0.35  # two connections wait side by side
    calls = fake.calls_to("sendMessage")
    assert all(call.at < sent - 0.15 for call in calls)  # recorded on arrival
    with pytest.raises(ValueError, match="latency must be >= 0"):
        fake.set_latency(-1)
