from __future__ import annotations

from agent_framework import Message


class TelegramChannel:
    """Telegram keeps no rendered output on the run: replies are rendered when they are sent."""

    name = "telegram"
    # An update whose worker died is answered again, from its run (processing._answer_with_agent).
    resumes_lost_runs = True

    def render_output(self, messages: list[Message]) -> list[dict]:
        return []
