from __future__ import annotations

import re

from afhost.registry import PushProgress
from afhost.types import HostedRunResult
from channels_app.telegram.push import push

# "<chat id>" or "<chat id>:<forum topic id>"; group ids are negative.
_LOCATOR = re.compile(r"(-?\d{1,20})(?::(\d{1,20}))?")


class TelegramChannel:
    """Telegram keeps no rendered output on the run: replies are rendered when they are sent."""

    name = "telegram"
    # An update whose worker died is answered again, from its run (processing._answer_with_agent).
    resumes_lost_runs = True

    def render_output(self, result: HostedRunResult) -> list[dict]:
        return []

    def push_locator(self, value: str) -> dict:
        match = _LOCATOR.fullmatch(value)
        if match is None:
            raise ValueError(
                "a Telegram chat is 'telegram:<chat id>' or 'telegram:<chat id>:<topic>'"
            )
        chat_id, thread_id = match.groups()
        return {"chat_id": int(chat_id), "thread_id": None if thread_id is None else int(thread_id)}

    def identity_locator(self, native_id: str) -> dict:
        # A person's private chat with the bot has their user id.
        return {"chat_id": int(native_id), "thread_id": None}

    async def push(self, locator: dict, text: str, *, progress: PushProgress) -> None:
        await push(locator, text, progress=progress)
