"""Hosting an agent_framework `Workflow` as the target: each run is one turn of the workflow.

AFHOST_TARGET names either a function that builds a fresh Workflow (recommended), or a built
Workflow. A Workflow instance keeps state between runs and refuses to run twice at once, so:
- a factory is called for every run, and runs of the same target run side by side;
- a built instance runs one run at a time per process, and is put back as it was loaded before
  each run, so that one conversation's executor state (an agent executor's conversation) never
  reaches another's. Copying it per run instead is not safe: its agents hold clients.

A run gives the workflow the conversation (a start executor that takes `list[Message]`) or the
new user text (one that takes `str`). Each `output` event becomes assistant message(s), and its
frame, as Microsoft's Invocations host frames it, goes to `HostedRunResult.workflow_outputs`.

A workflow that asks for input (`request_info`) pauses: its run completes with the question as
its answer. The next run after it in the conversation (or after it by previous_response_id)
resumes the workflow from that run's checkpoint, with the person's text as the answer. A run
that a dead worker left is run again from its own latest checkpoint, so executors that had
completed do not run again. Checkpoints are RunCheckpoint rows, JSON (never pickle).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import math
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from enum import Enum
from typing import Any

from agent_framework import (
    AgentResponse,
    AgentResponseUpdate,
    ChatResponse,
    ChatResponseUpdate,
    Content,
    Message,
    ResponseStream,
    Workflow,
    WorkflowCheckpoint,
    WorkflowEvent,
)
from agent_framework._workflows._typing_utils import is_instance_of  # private: see _input_for
from agent_framework.exceptions import WorkflowCheckpointException
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from pydantic import BaseModel

from afhost.db import db_call
from afhost.models import Run, RunCheckpoint
from afhost.types import new_item_id

logger = logging.getLogger(__name__)

# The run the target is being called for, set by afhost.execution around the call. A context
# variable, not an option: options go to an agent's chat client, and other targets ignore it.
hosted_run: ContextVar[Run | None] = ContextVar("afhost_hosted_run", default=None)

WorkflowFactory = Callable[[], Workflow]


class WorkflowTarget:
    """A workflow as the `run(messages, *, stream, options)` target afhost.execution drives."""

    def __init__(self, source: Workflow | WorkflowFactory, *, name: str) -> None:
        self.source = source
        self.id = self.name = name
        self.description = (
            source.description if isinstance(source, Workflow) else source.__doc__
        ) or ""
        self._as_loaded: WorkflowCheckpoint | None = None
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def load(cls, source: Workflow | WorkflowFactory, *, name: str) -> WorkflowTarget:
        """Check that the workflow can be hosted; raises TypeError saying why not."""
        workflow = source if isinstance(source, Workflow) else source()
        if not isinstance(workflow, Workflow):
            raise TypeError(
                "a function target without arguments must build a Workflow; this one returned "
                f"a {type(workflow).__name__}"
            )
        if _input_for(workflow, [Message("user", ["?"])]) is None:
            accepted = ", ".join(getattr(t, "__name__", str(t)) for t in workflow.input_types)
            raise TypeError(
                f"the workflow's start executor takes {accepted}; afhost gives a workflow the "
                "conversation (list[Message]) or the new user text (str)"
            )
        if source is workflow:
            logger.warning(
                "AFHOST_TARGET names a built Workflow (%s): its runs take turns, one at a time "
                "per process; name a function that builds it to run them side by side",
                name,
            )
        return cls(source, name=name)

    def run(
        self,
        messages: Sequence[Message],
        *,
        stream: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> Awaitable[AgentResponse] | ResponseStream[AgentResponseUpdate, AgentResponse]:
        turn = _Turn(
            self,
            run=hosted_run.get(),
            messages=list(messages),
            instructions=(options or {}).get("instructions", ""),
        )
        response = ResponseStream(turn.updates(), finalizer=turn.response)
        return response if stream else response.get_final_response()

    @contextlib.asynccontextmanager
    async def workflow(self) -> AsyncIterator[Workflow]:
        """A workflow for one run: a new one from the factory, or the instance, held alone and
        put back as it was loaded (its pending requests, state and executors' state)."""
        if not isinstance(self.source, Workflow):
            yield self.source()
            return
        lock = self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock:
            # Workflow has no public way to start afresh; Microsoft's hosting uses its runner too.
            runner = self.source._runner
            if self._as_loaded is None:
                self._as_loaded = await runner.build_checkpoint()
            else:
                await runner.restore_checkpoint(self._as_loaded)
            yield self.source


def _input_for(workflow: Workflow, conversation: list[Message]) -> list[Message] | str | None:
    # is_instance_of is private to agent_framework, as Workflow._runner (above): re-check both
    # when its pin moves.
    for value in (conversation, conversation[-1].text):
        if any(is_instance_of(value, accepted) for accepted in workflow.input_types):
            return value
    return None


class _Turn:
    """One run of a workflow target: starts or resumes the workflow, and turns its output and
    request_info events into frames and assistant updates."""

    def __init__(
        self, target: WorkflowTarget, *, run: Run | None, messages: list[Message], instructions: str
    ) -> None:
        self.target = target
        self.run = run
        self.messages = messages
        self.instructions = instructions
        self.frames: list[dict] = []
        self._message_ids: dict[tuple[str, str], str] = {}

    async def updates(self) -> AsyncIterator[AgentResponseUpdate]:
        async with self.target.workflow() as workflow:
            storage = None if self.run is None else RunCheckpointStorage(run=self.run, turn=self)
            start = await self._start(workflow)
            for restored in self.frames:  # what the run had output before its checkpoint
                for update in self._updates(restored):
                    yield update
            stream = workflow.run(**start, stream=True, checkpoint_storage=storage)
            try:
                async for event in stream:
                    if (frame := workflow_frame(event)) is not None:
                        self.frames.append(frame)
                        for update in self._updates(frame):
                            yield update
            finally:
                await stream.close()

    def response(self, updates: Sequence[AgentResponseUpdate]) -> AgentResponse:
        response = AgentResponse.from_updates(updates)
        response.finish_reason = "stop"
        response.additional_properties["workflow_outputs"] = list(self.frames)
        return response

    async def _start(self, workflow: Workflow) -> dict:
        """How this run starts the workflow: from its own latest checkpoint (it ran before, in a
        worker that died), with the person's answer to the previous run's pending request, or
        afresh with the conversation."""
        conversation = list(self.messages)
        if self.instructions:
            conversation.insert(0, Message("system", [self.instructions]))
        fresh = {"message": _input_for(workflow, conversation)}
        if self.run is None:  # called outside a hosted run: nothing to resume, nowhere to keep
            return fresh
        own, previous = await db_call(_resume_points)(run=self.run)
        if own is not None:
            logger.info(
                "run %s: resuming its workflow from its last checkpoint", self.run.public_id
            )
            self.frames.extend(own.outputs)
            return {"checkpoint_id": own.checkpoint_id}
        if previous is not None:
            pending = decode_checkpoint(previous.state).pending_request_info_events
            if pending:  # one question per message: later ones are asked again
                answer = {next(iter(pending)): self.messages[-1].text}
                return {"checkpoint_id": previous.checkpoint_id, "responses": answer}
        return fresh

    def _updates(self, frame: dict) -> list[AgentResponseUpdate]:
        """The assistant updates a frame shows as: an agent's response as its messages, text as
        itself, other data as JSON text; a request as its prompt. The first carries the frame
        itself (`workflow_frame`, None on the others), for channels that stream frames."""
        updates = self._shown(frame)
        for index, update in enumerate(updates):
            update.additional_properties = {
                **(update.additional_properties or {}),
                "workflow_frame": None if index else frame,
            }
        return updates

    def _shown(self, frame: dict) -> list[AgentResponseUpdate]:
        data = frame["data"]
        if frame["type"] == "request_info":
            return [_text_update(_prompt(data))]
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "agent_response":
            return [
                AgentResponseUpdate(
                    role=message.role,
                    contents=message.contents,
                    author_name=message.author_name,
                    message_id=message.message_id or new_item_id("msg"),
                )
                for message in AgentResponse.from_dict(data).messages
            ]
        if kind == "agent_response_update":  # a streamed agent: its chunks make one message
            update = AgentResponseUpdate.from_dict(data)
            key = (frame["executor_id"], update.message_id or update.response_id or "")
            update.message_id = self._message_ids.setdefault(key, new_item_id("msg"))
            return [update]
        return [_text_update(data if isinstance(data, str) else json.dumps(data))]


def _text_update(text: str) -> AgentResponseUpdate:
    # Each its own message: the Responses API shows each output as an item of its own.
    return AgentResponseUpdate(
        role="assistant", contents=[Content.from_text(text)], message_id=new_item_id("msg")
    )


def _prompt(data: Any) -> str:
    """What a person is asked: the request's text, or its `prompt` field, or its JSON."""
    if isinstance(data, str):
        return data
    if isinstance(data, dict) and isinstance(data.get("prompt"), str):
        return data["prompt"]
    return json.dumps(data)


def _resume_points(*, run: Run) -> tuple[RunCheckpoint | None, RunCheckpoint | None]:
    """The run's own latest checkpoint, and its previous run's."""
    return RunCheckpoint.objects.latest_of(run.pk), RunCheckpoint.objects.latest_of(
        run.previous_run_id
    )


# --- Frames: workflow events as Microsoft's Invocations host puts them on the wire -----------


def workflow_frame(event: WorkflowEvent) -> dict | None:
    """An output or request_info event as a frame (`_workflow_frame` in
    agent_framework_foundry_hosting); None for other events."""
    if event.type == "output":
        return {"type": "output", "data": plain(event.data), "executor_id": event.executor_id}
    if event.type == "request_info":
        return {
            "type": "request_info",
            "data": plain(event.data),
            "request_id": event.request_id,
            "source_executor_id": event.source_executor_id,
        }
    return None


def plain(value: Any) -> Any:
    """Workflow data as JSON values, as Microsoft's `_workflow_output` makes them; raises
    TypeError for data that has no JSON form."""
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError("a workflow output number must be finite")
        return value
    if isinstance(value, AgentResponse | AgentResponseUpdate | ChatResponse | ChatResponseUpdate):
        return plain(value.to_dict(exclude={"continuation_token"}))
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise TypeError("a workflow output mapping must have string keys")
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if callable(to_dict := getattr(value, "to_dict", None)):
        return plain(to_dict())
    raise TypeError(f"a workflow output of type {type(value).__name__} has no JSON form")


# --- Checkpoints as JSON ----------------------------------------------------------------------
#
# agent_framework encodes checkpoints with pickle. Ours are JSON: values JSON has are stored as
# themselves, others as {"__afhost__": kind, ...}. Only classes of agent_framework, of the
# package AFHOST_TARGET names and of AFHOST_CHECKPOINT_MODULES are stored (as Microsoft's hosting
# allowlists checkpoint types), and decoding only builds such data classes (dataclasses,
# pydantic models, enums, classes with from_dict) of modules this process has already imported,
# never importing a module a stored value names (as agent_framework's own deserialize_type).

_TAG = "__afhost__"


def encode_checkpoint(checkpoint: WorkflowCheckpoint) -> dict:
    return _encode(checkpoint)


def decode_checkpoint(state: dict) -> WorkflowCheckpoint:
    try:
        checkpoint = _decode(state)
    except (TypeError, KeyError, ValueError) as exc:  # a row this code did not write
        raise WorkflowCheckpointException(f"a stored checkpoint is malformed: {exc}") from exc
    if not isinstance(checkpoint, WorkflowCheckpoint):
        raise WorkflowCheckpointException("the stored checkpoint is not a WorkflowCheckpoint")
    return checkpoint


def _allowed_modules() -> tuple[str, ...]:
    target = settings.AFHOST_TARGET
    package = target.partition(":")[0].split(".")[0] if ":" in target else "agent_framework"
    return ("builtins", "agent_framework", package, *settings.AFHOST_CHECKPOINT_MODULES)


def _allowed(cls: type) -> bool:
    module = cls.__module__
    return any(module == m or module.startswith(f"{m}.") for m in _allowed_modules())


def _class_key(cls: type) -> str:
    if not _allowed(cls):
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} is kept in a workflow checkpoint, but only "
            "classes of agent_framework, of AFHOST_TARGET's package or of "
            "AFHOST_CHECKPOINT_MODULES may be"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def _tagged(kind: str, obj: Any, **fields: Any) -> dict:
    return {_TAG: kind, "class": _class_key(type(obj)), **fields}


def _encode(value: Any) -> Any:
    if value is None or (
        isinstance(value, str | int | float | bool) and not isinstance(value, Enum)
    ):
        return value
    if type(value) is list:
        return [_encode(item) for item in value]
    if type(value) is dict:
        if _TAG not in value and all(isinstance(key, str) for key in value):
            return {key: _encode(item) for key, item in value.items()}
        return {_TAG: "dict", "items": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if type(value) in (tuple, set, frozenset):
        return {_TAG: type(value).__name__, "items": [_encode(item) for item in value]}
    if isinstance(value, bytes):
        return {_TAG: "bytes", "base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime):
        return {_TAG: "datetime", "iso": value.isoformat()}
    if isinstance(value, type):
        return {_TAG: "type", "class": _class_key(value)}
    if isinstance(value, Enum):
        return _tagged("enum", value, value=_encode(value.value))
    if isinstance(value, BaseModel):
        return _tagged("pydantic", value, value=value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value):
        fields = {
            f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init
        }
        return _tagged("dataclass", value, fields=fields)
    if callable(getattr(value, "to_dict", None)) and callable(getattr(value, "from_dict", None)):
        return _tagged("object", value, value=_encode(value.to_dict()))
    raise TypeError(
        f"a {_class_key(type(value))} in a workflow checkpoint cannot be stored as JSON"
    )


_ITERABLES = {"tuple": tuple, "set": set, "frozenset": frozenset}


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    kind = value.get(_TAG)
    if kind is None:
        return {key: _decode(item) for key, item in value.items()}
    if kind == "dict":
        return {_decode(k): _decode(v) for k, v in value["items"]}
    if kind in _ITERABLES:
        return _ITERABLES[kind](_decode(item) for item in value["items"])
    if kind == "bytes":
        return base64.b64decode(value["base64"])
    if kind == "datetime":
        return datetime.fromisoformat(value["iso"])
    cls = _loaded_class(value["class"])
    if kind == "type":
        return cls
    if kind == "enum" and issubclass(cls, Enum):
        return cls(_decode(value["value"]))
    if kind == "pydantic" and issubclass(cls, BaseModel):
        return cls.model_validate(value["value"])
    if kind == "dataclass" and dataclasses.is_dataclass(cls):
        return cls(**{name: _decode(item) for name, item in value["fields"].items()})
    if kind == "object" and callable(getattr(cls, "from_dict", None)):
        return cls.from_dict(_decode(value["value"]))  # type: ignore[attr-defined]
    raise WorkflowCheckpointException(f"a stored checkpoint holds a {kind} {value['class']!r}")


def _loaded_class(key: str) -> type:
    module_name, _, qualname = key.partition(":")
    found: Any = sys.modules.get(module_name)
    for name in qualname.split("."):
        found = getattr(found, name, None)
    if not isinstance(found, type) or not _allowed(found):
        raise WorkflowCheckpointException(
            f"a stored checkpoint names {key!r}, which is not a class this process has loaded "
            "from agent_framework, AFHOST_TARGET's package or AFHOST_CHECKPOINT_MODULES"
        )
    return found


@transaction.atomic
def _keep_latest(
    *, run: Run, checkpoint_id: str, workflow_name: str, state: dict, outputs: list[dict]
) -> None:
    """Store a run's new checkpoint in place of its earlier ones: a run resumes only from its
    latest (and the next run from its previous run's latest), and each holds the outputs so far."""
    RunCheckpoint.objects.filter(run=run).exclude(checkpoint_id=checkpoint_id).delete()
    RunCheckpoint.objects.update_or_create(
        checkpoint_id=checkpoint_id,
        defaults={
            "run_id": run.pk,
            "workflow_name": workflow_name,
            "state": state,
            "outputs": outputs,
        },
    )


class RunCheckpointStorage:
    """agent_framework's CheckpointStorage over RunCheckpoint rows, for one run: it saves the
    run's checkpoints (with the frames the run had output by then), and loads and lists those of
    runs of the same isolation key."""

    def __init__(self, *, run: Run, turn: _Turn) -> None:
        self.run = run
        self.turn = turn

    def _visible(self) -> QuerySet[RunCheckpoint]:
        return RunCheckpoint.objects.visible_to(self.run.isolation_key)

    async def save(self, checkpoint: WorkflowCheckpoint) -> str:
        try:
            state = encode_checkpoint(checkpoint)
        except TypeError:
            # agent_framework only logs a failed save; the run goes on, but cannot resume.
            logger.exception("run %s: a workflow checkpoint has no JSON form", self.run.public_id)
            raise
        await db_call(_keep_latest)(
            run=self.run,
            checkpoint_id=checkpoint.checkpoint_id,
            workflow_name=checkpoint.workflow_name,
            state=state,
            outputs=list(self.turn.frames),
        )
        return checkpoint.checkpoint_id

    async def load(self, checkpoint_id: str) -> WorkflowCheckpoint:
        row = await db_call(self._visible().filter(checkpoint_id=checkpoint_id).first)()
        if row is None:
            raise WorkflowCheckpointException(f"No checkpoint found with ID {checkpoint_id}")
        return decode_checkpoint(row.state)

    async def list_checkpoints(self, *, workflow_name: str) -> list[WorkflowCheckpoint]:
        rows = await db_call(self._named)(workflow_name)
        return [decode_checkpoint(row.state) for row in rows]

    async def delete(self, checkpoint_id: str) -> bool:
        deleted, _ = await db_call(self._visible().filter(checkpoint_id=checkpoint_id).delete)()
        return bool(deleted)

    async def get_latest(self, *, workflow_name: str) -> WorkflowCheckpoint | None:
        rows = await db_call(self._named)(workflow_name)
        return decode_checkpoint(rows[-1].state) if rows else None

    async def list_checkpoint_ids(self, *, workflow_name: str) -> list[str]:
        return [row.checkpoint_id for row in await db_call(self._named)(workflow_name)]

    def _named(self, workflow_name: str) -> list[RunCheckpoint]:
        return list(
            self._visible().filter(workflow_name=workflow_name).order_by("created_at", "pk")
        )
