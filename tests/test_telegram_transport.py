"""The Bot API client our bots use (channels_app.telegram.transport), against the fake Bot API."""

import asyncio
import socket

import pytest
from django.conf import settings
from telegram import Bot
from telegram.error import NetworkError, TimedOut

from channels_app.telegram.processing import make_bot
from channels_app.telegram.transport import AiohttpRequest, AnswerTimedOut


def _bot(base_url: str, **timeouts) -> Bot:
    request = AiohttpRequest(connections=1, **timeouts)
    return Bot(settings.TELEGRAM_BOT_TOKEN, base_url=base_url, request=request)


def test_an_upload_and_a_download_go_through(telegram_api):
    # given
    content = bytes(range(256)) * 4 + b"\r\n\r\n--"

    async def round_trip() -> bytearray:
        async with make_bot() as bot:
            sent = await bot.send_document(42, content, filename="blob.bin", caption="[x]")
            return await (await bot.get_file(sent.document.file_id)).download_as_bytearray()

    # when
    downloaded = asyncio.run(round_trip())

    # then: the file went as a multipart part, the caption as a field; the download's path
    # (with the token, percent-encoded) found it
    [call] = telegram_api.calls_to("sendDocument")
    assert call.params["caption"] == "[x]"
    assert call.params["document"].filename == "blob.bin"
    assert bytes(downloaded) == content


def test_an_answer_that_comes_too_late_may_have_taken_effect(telegram_api):
    # given: the Bot API answers after 1 s; the client waits 0.2 s
    telegram_api.set_latency(1, method="sendMessage")

    async def send() -> None:
        async with _bot(f"{telegram_api.url}/bot", read=0.2) as bot:
            await bot.send_message(42, "hello")

    # when
    try:
        with pytest.raises(AnswerTimedOut, match="waiting for the answer"):
            asyncio.run(send())
    finally:
        telegram_api.set_latency(0, method="sendMessage")

    # then: it did arrive
    assert telegram_api.sent_texts(42) == ["hello"]


def test_a_bot_api_nobody_listens_on_is_a_network_error_not_a_late_answer():
    # given: a port with nothing behind it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def send() -> None:
        async with _bot(f"http://127.0.0.1:{port}/bot") as bot:
            await bot.send_message(42, "hello")

    # when / then: not sent, so safe to send again
    with pytest.raises(NetworkError, match="aiohttp.ClientConnectorError") as raised:
        asyncio.run(send())
    assert not isinstance(raised.value, TimedOut)
