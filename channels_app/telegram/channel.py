from __future__ import annotations

from agent_framework import Message


class TelegramChannel:
    """Telegram keeps no rendered output on the run: replies are rendered when they are sent."""

    name = "telegram"

    def render_output(self, messages: list[Message]) -> list[dict]:
        return []
