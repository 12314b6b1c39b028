"""Handing rows to django-q2 once the transaction that stored them commits."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import transaction

logger = logging.getLogger(__name__)


def queue_on_commit(queue: Callable[[], object], *, what: str, recovery: str) -> None:
    """Call `queue` (an `async_task` carrying row ids) once the transaction commits.

    The rows are the truth: if the broker refuses the task (Redis down), the work is stored all
    the same, so the caller is answered as usual, and the failure is logged with `recovery`, the
    sweeper that hands the rows out again, instead of failing a request whose work was accepted
    (a client that retried would send it twice).
    """

    def guarded() -> None:
        try:
            queue()
        except Exception:
            logger.exception("queueing %s failed; it is stored, and %s", what, recovery)

    transaction.on_commit(guarded)
