"""Running database work from async code."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections

T = TypeVar("T")


async def in_thread(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run sync database work in a pool thread and hand its connection back afterwards.

    Unlike a thread-sensitive hop, calls from concurrent requests run side by side (each on a
    connection of its own, from the pool on PostgreSQL), so one slow query does not queue every
    other request behind it; and no connection outlives the call, which matters where Django's
    request handling is not there to close it (the create endpoint, long-running commands).
    """

    def call() -> T:
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return await sync_to_async(call, thread_sensitive=False)()


def db_call(function: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`function` as an awaitable that runs on the process's database thread.

    That one thread (Django's thread-sensitive executor; the request's own thread inside Django)
    keeps its connection between calls, so a process that runs many turns opens one connection,
    not one per turn. A connection that broke (the database restarted) is closed, and the next
    call opens a new one.
    """

    def call(*args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        finally:
            for connection in connections.all(initialized_only=True):
                if connection.errors_occurred and not connection.is_usable():
                    connection.close()

    return sync_to_async(call, thread_sensitive=True)


def storable(value: Any) -> bool:
    """Whether every string in a JSON value can be stored: PostgreSQL refuses NUL in text and
    JSON, and UTF-8 has no lone surrogates (JSON's \\u escapes can make both)."""
    pending = [value]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                return False
            try:
                value.encode()
            except UnicodeEncodeError:
                return False
    return True
