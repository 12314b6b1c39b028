"""Short leases on the rows a process is working on: a run, a conversation's turn, a chat.

A lease is taken and given back with conditional UPDATEs, never check-then-act, and renewed by
one keeper thread per process while the work is alive: every third of AFHOST_LEASE_SECONDS, one
UPDATE per table renews all of them. A process that dies (kill -9, a lost machine) stops
renewing, so its rows are free again within AFHOST_LEASE_SECONDS and another process takes
them over; nothing waits for a long timeout. Owners are random per lease, so only the process
that took a lease can renew or give it back.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import weakref
from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connections
from django.db.models import Q
from django.utils import timezone

from afhost.models import LeasedModel

logger = logging.getLogger(__name__)


def lease_duration() -> timedelta:
    return timedelta(seconds=settings.AFHOST_LEASE_SECONDS)


def free(now: datetime) -> Q:
    """Rows nobody holds: never leased, given back, or left to expire by a dead process."""
    return Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)


def take_lease(model: type[LeasedModel], pk: int, *, where: Q | None = None, **changes) -> str:
    """Lease the row if it is free (and matches `where`), applying `changes` in the same UPDATE.

    Returns the new owner, or "" if another process holds the row or it no longer matches.
    The keeper renews the lease until `give_back` (see LeaseKeeper.hold for a holder).
    """
    now = timezone.now()
    owner = secrets.token_hex(8)
    taken = model._default_manager.filter(free(now), where or Q(), pk=pk).update(
        lease_owner=owner,
        lease_expires_at=now + lease_duration(),
        updated_at=now,
        **changes,
    )
    if not taken:
        return ""
    keeper.hold(model, pk, owner)
    return owner


def give_back(
    model: type[LeasedModel], pk: int, owner: str, *, where: Q | None = None, **changes
) -> bool:
    """Give the lease back, applying `changes` if the row still matches `where`.

    False, changing nothing, if the lease was no longer ours or the row no longer matches.
    """
    keeper.forget(model, pk, owner)
    changes.setdefault("updated_at", timezone.now())
    return bool(
        model._default_manager.filter(where or Q(), pk=pk, lease_owner=owner).update(
            lease_owner="", lease_expires_at=None, **changes
        )
    )


class LeaseKeeper:
    """Renews this process's leases from a thread of its own, which starts with the first."""

    def __init__(self) -> None:
        self._held: dict[tuple[type[LeasedModel], int], tuple[str, weakref.ref | None]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(
        self, model: type[LeasedModel], pk: int, owner: str, holder: object | None = None
    ) -> None:
        """Renew the lease until it is given back, or, given a `holder`, until that object is
        gone: work dropped without giving its leases back (a request whose stream never
        started) lets them run out instead of holding them forever."""
        with self._lock:
            self._held[model, pk] = (owner, None if holder is None else weakref.ref(holder))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._renew_forever, name="afhost-leases", daemon=True
                )
                self._thread.start()

    def forget(self, model: type[LeasedModel], pk: int, owner: str) -> None:
        """Stop renewing this lease (not one taken on the row since, by another turn)."""
        with self._lock:
            if self._held.get((model, pk), ("",))[0] == owner:
                del self._held[model, pk]

    def held(self) -> dict[tuple[type[LeasedModel], int], str]:
        """The leases to renew now, forgetting those whose holder is gone."""
        with self._lock:
            for key, (_, holder) in list(self._held.items()):
                if holder is not None and holder() is None:
                    del self._held[key]
            return {key: owner for key, (owner, _) in self._held.items()}

    def renew(self) -> int:
        """Renew every lease held now, one UPDATE per table; returns how many were still ours."""
        by_model: dict[type[LeasedModel], Q] = defaultdict(Q)
        for (model, pk), owner in self.held().items():
            by_model[model] |= Q(pk=pk, lease_owner=owner)
        expires = timezone.now() + lease_duration()
        return sum(
            model._default_manager.filter(ours).update(lease_expires_at=expires)
            for model, ours in by_model.items()
        )

    def _renew_forever(self) -> None:
        while True:
            time.sleep(settings.AFHOST_LEASE_SECONDS / 3)
            if not self.held():
                continue
            try:
                self.renew()
            except Exception:
                # A database blip: the next round tries again, well before the leases run out.
                logger.exception("renewing leases failed")
            finally:
                connections.close_all()


keeper = LeaseKeeper()
