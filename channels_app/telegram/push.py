"""Pushing a message to a Telegram chat unasked (delivery's destinations).

One attempt sends each remaining part once: retrying is delivery's job, which records every
attempt. Telegram's refusals are sorted into what another attempt may fix and what it cannot.
A part Telegram received but did not answer in time may have arrived: it is not sent again on
its own (at most once), as when a worker dies mid-push.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from telegram import Bot
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)

from afhost.exceptions import PushError
from afhost.registry import PushProgress
from channels_app.telegram.processing import NO_PREVIEW, job_bot
from channels_app.telegram.rendering import OutgoingText, render_reply
from channels_app.telegram.transport import AnswerTimedOut

logger = logging.getLogger(__name__)


def _seconds(value: int | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


async def _send(bot: Bot, locator: dict, part: OutgoingText) -> None:
    kwargs: dict[str, Any] = {
        "message_thread_id": locator.get("thread_id"),
        "link_preview_options": NO_PREVIEW,
    }
    try:
        await bot.send_message(locator["chat_id"], part.html, parse_mode=ParseMode.HTML, **kwargs)
    except BadRequest as exc:
        if "parse entities" not in exc.message.lower():
            raise
        logger.warning("chat %s: formatting rejected (%s); plain text", locator["chat_id"], exc)
        await bot.send_message(locator["chat_id"], part.plain, **kwargs)


async def push(locator: dict, text: str, *, progress: PushProgress) -> None:
    """Send `text` to the chat, skipping the parts an earlier attempt delivered."""
    async with job_bot() as bot:
        parts = render_reply(text)
        try:
            for index in range(progress.sent_parts, len(parts)):
                await _send(bot, locator, parts[index])
                await progress.part_sent(last=index == len(parts) - 1)
        except RetryAfter as exc:
            wait = _seconds(exc.retry_after)
            raise PushError(f"Telegram asked to wait {wait:g} s", retry_after=wait) from exc
        except ChatMigrated as exc:
            moved = {**locator, "chat_id": exc.new_chat_id}
            raise PushError(f"the group moved to chat {exc.new_chat_id}", moved_to=moved) from exc
        except Forbidden as exc:
            raise PushError(
                f"Telegram refused: {exc.message}", permanent=True, unreachable=True
            ) from exc
        except InvalidToken as exc:
            raise PushError(f"Telegram refused the bot token: {exc}", permanent=True) from exc
        except AnswerTimedOut as exc:
            raise PushError(
                "Telegram did not answer in time: the message may have arrived, so it was not "
                "sent again. Retry it if the person did not get it.",
                permanent=True,
            ) from exc
        except TimedOut as exc:  # not sent: try again
            raise PushError(f"Telegram unreachable: TimedOut: {exc}") from exc
        except BadRequest as exc:  # chat not found, and every other 400
            raise PushError(
                f"Telegram rejected the message: {exc.message}", permanent=True
            ) from exc
        except (NetworkError, TelegramError) as exc:  # 5xx, connection errors
            raise PushError(f"Telegram unreachable: {type(exc).__name__}: {exc}") from exc
