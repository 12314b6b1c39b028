"""Handing stored rows to django-q2's workers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.models import OrmQ

logger = logging.getLogger(__name__)


class DatabaseBroker(ORM):
    """django-q2's database broker, taking up to `bulk` tasks with one claim.

    django-q2's own takes each task with an UPDATE of its own, each after a connection check:
    two round trips a task, in the one pusher process that feeds every worker process. Here a
    batch is locked (SKIP LOCKED: another cluster takes others) and claimed with one UPDATE.
    """

    def dequeue(self) -> list[tuple[int, str]] | None:
        due = self.get_connection().filter(key=self.list_key, lock__lt=timezone.now())
        # An idle queue is looked at with one query a poll, as django-q2's own broker does.
        if not due.exists():
            time.sleep(Conf.POLL)
            return None
        with transaction.atomic(using=Conf.ORM):
            tasks = list(
                due.select_for_update(skip_locked=True)
                .order_by("pk")
                .values_list("pk", "payload")[: Conf.BULK]
            )
            OrmQ.objects.using(Conf.ORM).filter(pk__in=[pk for pk, _ in tasks]).update(
                lock=self.timeout(None)
            )
        return tasks or None


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
