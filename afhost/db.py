"""Running database work from async code."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections, router, transaction
from django.db.models import Model, QuerySet

T = TypeVar("T")
M = TypeVar("M", bound=Model)


async def in_thread(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run sync database work in a pool thread, giving a pooled connection back afterwards.

    Unlike a thread-sensitive hop, calls from concurrent requests run side by side (each on a
    connection of its own), so one slow query does not queue every other request behind it. On
    PostgreSQL no connection outlives the call (it goes back to the pool), which matters where
    Django's request handling is not there to close it; a SQLite connection stays with its thread
    (opening one costs more than most queries), and one that broke is closed.
    """

    def call() -> T:
        try:
            return function(*args, **kwargs)
        finally:
            for connection in connections.all(initialized_only=True):
                if connection.settings_dict["OPTIONS"].get("pool") or (
                    connection.errors_occurred and not connection.is_usable()
                ):
                    connection.close()

    # Not through a copied context (sync_to_async's): a thread's connection lives in its own.
    return await asyncio.get_running_loop().run_in_executor(None, call)


# The worker engine's database threads, in a worker process (afhost.engine).
_worker_threads: Executor | None = None


def use_worker_threads(executor: Executor) -> None:
    global _worker_threads
    _worker_threads = executor


def _close_broken_connections() -> None:
    for connection in connections.all(initialized_only=True):
        if connection.errors_occurred and not connection.is_usable():
            connection.close()


def db_call(function: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`function` as an awaitable that runs on a database thread, which keeps its connection.

    In a worker process, that is one of the engine's few database threads, so a worker opens a
    few connections whatever its concurrency, and many turns' hops run side by side. Elsewhere it
    is Django's thread-sensitive thread (a test's own thread, which sees its transaction). A
    connection that broke (the database restarted) is closed, and the next call opens a new one.
    """

    def call(*args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        finally:
            _close_broken_connections()

    on_django_thread = sync_to_async(call, thread_sensitive=True)

    async def hop(*args: Any, **kwargs: Any) -> T:
        if _worker_threads is None:
            return await on_django_thread(*args, **kwargs)
        # Not through a copied context: each thread's connection lives in its own context.
        return await asyncio.get_running_loop().run_in_executor(
            _worker_threads, functools.partial(call, *args, **kwargs)
        )

    return hop


def forget_inherited_connections() -> None:
    """In a forked process: drop the connections the parent had open, without closing them
    (closing would end the parent's session, on the socket both hold); it opens its own."""
    for connection in connections.all(initialized_only=True):
        connection.connection = None


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


def unique_or_none(rows: QuerySet[M]) -> M | None:
    """The row a lookup by a unique key finds, or None: `first()` without the ORDER BY it adds,
    which costs more Python to build than the query takes to run."""
    return next(iter(rows[:1]), None)


def insert_rows(objs: Sequence[M]) -> None:
    """Insert new rows of one model, many per statement, and give each object its primary key:
    `bulk_create` for objects whose fields hold plain values (no expressions, no conflicts).

    Each value is converted as bulk_create converts it (`pre_save`, `get_db_prep_save`), the
    statements commit together, and each goes through Django's cursor (its logging and error
    wrapping); what is left out is the SQL compiler's generality, which costs more Python per
    value than the conversion itself. The run writer inserts every stored foreground run with it.
    """
    if not objs:
        return
    opts = type(objs[0])._meta
    connection = connections[router.db_for_write(type(objs[0]))]
    fields = [
        field
        for field in opts.concrete_fields
        if not field.generated and field is not opts.auto_field
    ]
    qn = connection.ops.quote_name
    insert = f"INSERT INTO {qn(opts.db_table)} ({', '.join(qn(field.column) for field in fields)})"
    returning = f"RETURNING {qn(opts.pk.column)}"
    row = f"({', '.join(['%s'] * len(fields))})"
    size = connection.ops.bulk_batch_size(fields, objs)
    with transaction.atomic(using=connection.alias, savepoint=False):
        for start in range(0, len(objs), size):
            batch = objs[start : start + size]
            for obj in batch:
                obj._prepare_related_fields_for_save(operation_name="insert_rows")  # type: ignore[attr-defined]
            params = [
                field.get_db_prep_save(field.pre_save(obj, True), connection)
                for obj in batch
                for field in fields
            ]
            with connection.cursor() as cursor:
                cursor.execute(
                    f"{insert} VALUES {', '.join([row] * len(batch))} {returning}", params
                )
                pks = [pk for (pk,) in cursor.fetchall()]
            for obj, pk in zip(batch, pks, strict=True):
                obj.pk = pk
                obj._state.adding, obj._state.db = False, connection.alias
