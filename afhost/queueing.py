"""Handing stored rows to django-q2's workers."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)


def queue_stored(queue: Callable[[], object], *, what: str, recovery: str) -> None:
    """Call `queue` (an `async_task` carrying the ids of rows this transaction stores).

    On the database broker the queue is a table of the same database: the task is queued in the
    same transaction, so it commits with the rows or not at all (and django-q2 does not trade
    the connection for a fresh one to queue it, as it does outside a transaction).

    On Redis it is queued once the transaction commits, so that no worker looks for rows before
    they are there. If Redis refuses it (down), the work is stored all the same: the caller is
    answered as usual, and the failure is logged with `recovery`, the sweeper that hands the rows
    out again, instead of failing a request whose work was accepted (a client that retried would
    send it twice).
    """
    if "orm" in settings.Q_CLUSTER:
        queue()
        return
    # Only here: redis-py costs a process ~20 MiB, and the database broker does without it.
    from redis.exceptions import RedisError

    def guarded() -> None:
        try:
            queue()
        except (RedisError, OSError):
            logger.exception("queueing %s failed; it is stored, and %s", what, recovery)

    transaction.on_commit(guarded)
