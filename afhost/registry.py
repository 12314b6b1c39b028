"""The host core knows channels only through this registry: channel name -> rendering hooks, and
the sweepers that recover their lost work.

Apps register from their AppConfig.ready(); the core never imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agent_framework import AgentResponseUpdate, Message

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

    def render_output(self, messages: list[Message]) -> list[dict]:
        """The output items of a finished blocking run, as the channel stores them."""


class StreamingChannel(Channel, Protocol):
    """A channel whose runs can stream and run in the background (e.g. the Responses API)."""

    def renderer(self, run: Run, *, next_sequence: int) -> RunRenderer: ...


_channels: dict[str, Channel] = {}


def register_channel(channel: Channel) -> None:
    _channels[channel.name] = channel


def channel_names() -> list[str]:
    return sorted(_channels)


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
    return channel


_sweepers: list[Callable[[], object]] = []


def register_sweeper(sweep: Callable[[], object]) -> None:
    """A function the worker engine calls every third of a lease to hand out work whose process
    died or whose queue task went missing. It must be safe to run in many processes at once."""
    if sweep not in _sweepers:
        _sweepers.append(sweep)


def sweepers() -> list[Callable[[], object]]:
    return list(_sweepers)
