from __future__ import annotations

from agent_framework import Message

from afhost.models import Run
from channels_app.responses.rendering import ResponsesRenderer, output_items


class ResponsesChannel:
    name = "responses"
    resumes_lost_runs = False

    def renderer(self, run: Run, *, next_sequence: int) -> ResponsesRenderer:
        return ResponsesRenderer(run, next_sequence=next_sequence)

    def render_output(self, messages: list[Message]) -> list[dict]:
        return output_items(messages)
