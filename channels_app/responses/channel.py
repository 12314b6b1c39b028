from __future__ import annotations

from afhost.models import Run
from afhost.types import HostedRunResult
from channels_app.responses.rendering import ResponsesRenderer, output_items


class ResponsesChannel:
    name = "responses"
    resumes_lost_runs = False

    def renderer(self, run: Run, *, next_sequence: int) -> ResponsesRenderer:
        return ResponsesRenderer(run, next_sequence=next_sequence)

    def render_output(self, result: HostedRunResult) -> list[dict]:
        return output_items(result.messages)
