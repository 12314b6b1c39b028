from __future__ import annotations


class HostError(Exception):
    """Base of the host core's errors; channels translate them to their wire format."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class RunNotFound(HostError):
    pass


class InvalidRunState(HostError):
    """The run exists but cannot do what was asked in its current status."""


class ConversationBusy(HostError):
    """Another turn is in progress in the conversation; a turn waits, or is refused."""


class HistoryTooLong(HostError):
    """A conversation's history exceeds the per-turn budget, and the run may not truncate it."""
