"""What the Invocations wire carries: the answer (`{"response": text}`), its streamed frames
(`delta`, `done`, `error`), and a long-running invocation's status, as Microsoft's hosts put
them; a workflow's outputs as the frames its output and request_info events make."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from agent_framework import AgentResponseUpdate, Message

from afhost.models import Run
from afhost.targets import hosts_workflow
from afhost.types import HostedRunResult

# A run's status as a long-running invocation reports it.
STATUSES: dict[str, str] = {
    Run.Status.QUEUED: "running",
    Run.Status.IN_PROGRESS: "running",
    Run.Status.COMPLETED: "completed",
    Run.Status.INCOMPLETE: "completed",
    Run.Status.FAILED: "failed",
    Run.Status.CANCELLED: "cancelled",
}


def stored_output(result: HostedRunResult) -> list[dict]:
    """What a run keeps as its output items: a workflow's frames (an agent's text is read from
    its messages)."""
    return list(result.workflow_outputs or [])


def failure_message(error: Mapping[str, Any] | None) -> str:
    return (error or {}).get("message") or "Agent invocation failed."


class InvocationsRenderer:
    """A streamed invocation's frames: the text as `delta`s (a workflow's events as frames of
    their own type), then `done` naming the session, or `error`."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._output_items: list[dict] = []

    def start(self) -> list[dict]:
        return []

    def resume(self) -> list[dict]:
        return []

    def update(self, update: AgentResponseUpdate) -> list[dict]:
        properties = update.additional_properties or {}
        if "workflow_frame" in properties:  # a workflow's: its frames, not its text
            frame = properties["workflow_frame"]
            return [] if frame is None else [{"event": frame["type"], "data": frame}]
        return [{"event": "delta", "data": {"text": update.text}}] if update.text else []

    def finish(self, result: HostedRunResult) -> list[dict]:
        self._output_items = stored_output(result)
        if result.status == Run.Status.FAILED:
            data = {
                "message": failure_message(result.error),
                "code": "workflow_invocation_failed" if hosts_workflow() else "invocation_failed",
                "status": 500,
            }
            return [{"event": "error", "data": data}]
        return [{"event": "done", "data": {"session_id": self.run.attributes["session_id"]}}]

    @property
    def output_items(self) -> list[dict]:
        return self._output_items


def sse(frames: Iterable[dict]) -> str:
    return "".join(f"event: {f['event']}\ndata: {json.dumps(f['data'])}\n\n" for f in frames)


def answer_text(run: Run) -> str:
    """The text of the run's messages, joined as agent_framework's `AgentResponse.text` does."""
    return "".join(Message.from_dict(message).text for message in run.output_messages)


def output(run: Run) -> list[dict] | str:
    """A finished invocation's output: a workflow's frames, or an agent's text."""
    if run.output_items or hosts_workflow():
        return run.output_items
    return answer_text(run)


def answer(run: Run) -> dict:
    """A finished invocation's body, as Microsoft's host answers it."""
    answered = output(run)
    return {"output": answered} if isinstance(answered, list) else {"response": answered}


def invocation_status(run: Run) -> dict:
    """A long-running invocation as GET /invocations/{id} reports it."""
    body: dict[str, Any] = {"invocation_id": run.invocation_id, "status": STATUSES[run.status]}
    if body["status"] == "completed":
        body["output"] = output(run)
    elif body["status"] == "failed":
        body["error"] = failure_message(run.error)
    return body
