"""No secret reaches a log line: the bot token is in every Bot API URL, the webhook secret in the
parameters python-telegram-bot logs at DEBUG, and either may be quoted by an exception."""

import asyncio
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from telegram.error import InvalidToken

from channels_app.telegram.processing import make_bot

ROOT = Path(__file__).resolve().parent.parent
BOT_API_LOGGERS = ("", "aiohttp", "telegram")


def _leaks(output: str) -> list[str]:
    token_secret = settings.TELEGRAM_BOT_TOKEN.partition(":")[2]
    secrets = (token_secret, settings.TELEGRAM_WEBHOOK_SECRET, settings.SECRET_KEY)
    return [secret for secret in secrets if secret in output]


@contextmanager
def _console_at_debug() -> Iterator[io.StringIO]:
    """What the handler settings.LOGGING installs writes, with the Bot API's loggers at DEBUG."""
    console = next(h for h in logging.getLogger().handlers if h.get_name() == "console")
    loggers = [logging.getLogger(name) for name in BOT_API_LOGGERS]
    levels = [logger.level for logger in loggers]
    output = io.StringIO()
    stream = console.setStream(output)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    try:
        yield output
    finally:
        console.setStream(stream)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def test_bot_api_calls_log_no_secret_at_debug_level(telegram_api):
    # given
    telegram_api.add_file("photo-1", b"\xff\xd8 a jpeg")

    async def use_the_bot_api():
        async with make_bot() as bot:
            await bot.set_webhook(
                "https://agent.example.com/telegram/webhook/",
                secret_token=settings.TELEGRAM_WEBHOOK_SECRET,
            )
            await (await bot.get_file("photo-1")).download_as_bytearray()

    # when
    with _console_at_debug() as output:
        asyncio.run(use_the_bot_api())

    # then
    logged = output.getvalue()
    assert "Calling Bot API endpoint `setWebhook`" in logged  # python-telegram-bot's, at DEBUG
    assert "[REDACTED]" in logged  # the webhook's secret, in the parameters
    assert _leaks(logged) == []


def test_an_exception_that_quotes_the_token_is_logged_without_it(telegram_api, settings):
    # given: a token the Bot API rejects, which python-telegram-bot quotes in its exception
    settings.TELEGRAM_BOT_TOKEN = "654321:REJECTED-TOKEN-VALUE"

    async def start_the_bot():
        async with make_bot():
            pass

    # when
    with _console_at_debug() as output:
        try:
            asyncio.run(start_the_bot())
        except InvalidToken:
            logging.getLogger("channels_app.telegram").exception("the bot did not start")

    # then
    logged = output.getvalue()
    assert "InvalidToken: The token `[REDACTED]` was rejected by the server." in logged
    assert "REJECTED-TOKEN-VALUE" not in logged


@pytest.mark.parametrize(
    "command",
    [
        ["set_telegram_webhook", "https://agent.example.com"],
        ["telegram_poll", "--once", "--timeout", "0"],
    ],
)
def test_telegram_commands_log_no_secret_at_debug_level(telegram_api, command):
    # given
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "afhost.settings_test",
        "TELEGRAM_API_BASE_URL": f"{telegram_api.url}/bot",
        "LOG_LEVEL": "DEBUG",
    }

    # when
    done = subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # then
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Calling Bot API endpoint `getMe`" in output
    assert _leaks(output) == []


def test_the_entra_client_secret_is_redacted(entra):
    logger = logging.getLogger("afhost.test")
    with _console_at_debug() as output:
        logger.warning("token exchange failed: client_secret=%s", settings.ENTRA_CLIENT_SECRET)

    assert settings.ENTRA_CLIENT_SECRET not in output.getvalue()
    assert "client_secret=[REDACTED]" in output.getvalue()


def test_the_task_queue_logs_its_cluster_not_every_task(caplog):
    # given: what django-q2 logs for a task's life, and for its cluster's
    logger = logging.getLogger("django-q")

    # when
    with caplog.at_level(logging.INFO):
        logger.info("Enqueued [afhost] 12")
        logger.info("Process-1:1 processing bravo-two 'channels_app.tasks.process_telegram_chat'")
        logger.info("Processed 'channels_app.tasks.process_telegram_chat' (bravo-two)")
        logger.info("Q Cluster afhost starting.")
        logger.error("Failed 'afhost.tasks.execute_run' (bravo-three) - boom")

    # then
    assert [record.getMessage() for record in caplog.records] == [
        "Q Cluster afhost starting.",
        "Failed 'afhost.tasks.execute_run' (bravo-three) - boom",
    ]
