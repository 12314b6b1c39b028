"""The host core knows channels only through this registry: channel name -> rendering hooks, and
the sweepers that recover their lost work.

Apps register from their AppConfig.ready(); the core never imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    from agent_framework import AgentResponseUpdate

    from afhost.models import Run
    from afhost.types import HostedRunResult


class RunRenderer(Protocol):
    """Turns one run's progress into the channel's wire events (e.g. Responses SSE events)."""

    def start(self) -> list[dict]:
        """Events announcing the run in its current status (queued or in progress)."""

    def resume(self) -> list[dict]:
        """Events for a queued run that a worker has started."""

    def update(self, update: AgentResponseUpdate) -> list[dict]:
        """Events for one streamed update of the target."""

    def finish(self, result: HostedRunResult) -> list[dict]:
        """Terminal events; afterwards `output_items` holds the rendered output."""

    @property
    def output_items(self) -> list[dict]: ...


class Channel(Protocol):
    name: str
    # Whether the channel runs a run again whose process died (Telegram, from its inbox), so the
    # sweeper must leave it alone, instead of failing it.
    resumes_lost_runs: bool

    def render_output(self, result: HostedRunResult) -> list[dict]:
        """The output items of a finished blocking run, as the channel stores them."""


class PushProgress(Protocol):
    """How much of a message a channel's earlier attempts delivered, and where it records more."""

    @property
    def sent_parts(self) -> int:
        """The parts delivered so far."""

    async def part_sent(self, *, last: bool) -> None:
        """Record that one more part of the message (`last`: its last) was accepted."""


class PushingChannel(Channel, Protocol):
    """A channel that can send a message unasked (delivery's destinations)."""

    def push_locator(self, value: str) -> dict:
        """The locator a trusted caller names after the channel ("telegram:<chat id>"); raises
        ValueError for one the channel cannot reach."""

    def identity_locator(self, native_id: str) -> dict:
        """Where a person of this channel (by native id) is reached privately."""

    async def push(self, locator: dict, text: str, *, progress: PushProgress) -> None:
        """Send `text` (Markdown) to `locator`, skipping the parts `progress` has; raises
        afhost.exceptions.PushError."""


class StreamingChannel(Channel, Protocol):
    """A channel whose runs can stream and run in the background (e.g. the Responses API)."""

    def renderer(self, run: Run, *, next_sequence: int) -> RunRenderer: ...


_channels: dict[str, Channel] = {}


def register_channel(channel: Channel) -> None:
    _channels[channel.name] = channel


def channel_names() -> list[str]:
    return sorted(_channels)


def pushing_channels() -> dict[str, PushingChannel]:
    return {
        name: cast("PushingChannel", channel)
        for name, channel in _channels.items()
        if hasattr(channel, "push")
    }


def channels_resuming_lost_runs() -> list[str]:
    return [name for name, channel in _channels.items() if channel.resumes_lost_runs]


def get_channel(name: str) -> Channel:
    try:
        return _channels[name]
    except KeyError:
        raise LookupError(f"no channel named {name!r} is registered") from None


def get_streaming_channel(name: str) -> StreamingChannel:
    """The channel of a run that streams or runs in the background (only such channels can)."""
    channel = get_channel(name)
    if not hasattr(channel, "renderer"):
        raise LookupError(f"the {name!r} channel neither streams nor runs in the background")
    return cast("StreamingChannel", channel)


_sweepers: list[Callable[[], object]] = []


def register_sweeper(sweep: Callable[[], object]) -> None:
    """A function the worker engine calls every third of a lease to hand out work whose process
    died or whose queue task went missing. It must be safe to run in many processes at once."""
    if sweep not in _sweepers:
        _sweepers.append(sweep)


def sweepers() -> list[Callable[[], object]]:
    return list(_sweepers)


_finish_hooks: list[Callable[[Run], object]] = []


def register_finish_hook(hook: Callable[[Run], object]) -> None:
    """A function called with each stored run that ends in a worker (`services.finish_run`),
    inside the transaction that stores its end: e.g. delivery schedules its pushes there."""
    if hook not in _finish_hooks:
        _finish_hooks.append(hook)


def finish_hooks() -> list[Callable[[Run], object]]:
    return list(_finish_hooks)
