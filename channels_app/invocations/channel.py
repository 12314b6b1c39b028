from __future__ import annotations

from afhost.models import Run
from afhost.types import HostedRunResult
from channels_app.invocations.rendering import InvocationsRenderer, stored_output


class InvocationsChannel:
    name = "invocations"
    resumes_lost_runs = False

    def renderer(self, run: Run, *, next_sequence: int) -> InvocationsRenderer:
        return InvocationsRenderer(run)

    def render_output(self, result: HostedRunResult) -> list[dict]:
        return stored_output(result)
