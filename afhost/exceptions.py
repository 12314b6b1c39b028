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


class PushError(Exception):
    """A channel could not push a message to a destination.

    `permanent`: trying again cannot help (the user blocked the bot, the chat does not exist);
    `unreachable`: because the person cannot be reached there at all (they blocked the bot).
    `retry_after`: seconds the channel asked us to wait (e.g. Telegram's 429). `moved_to`: the
    destination's new locator (a group upgraded to a supergroup); sending there may succeed.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        unreachable: bool = False,
        retry_after: float | None = None,
        moved_to: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.permanent, self.unreachable = message, permanent, unreachable
        self.retry_after, self.moved_to = retry_after, moved_to
