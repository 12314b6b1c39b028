"""Who talks to the agent, and whether they may."""

from __future__ import annotations

from dataclasses import dataclass

from django.utils import timezone

from afhost.types import ChannelIdentity
from linking.models import Identity


def touch_identity(
    *, identity: ChannelIdentity, display_name: str = "", username: str = ""
) -> Identity:
    """Upsert the identity a message came from and note when it was last seen.

    A message from an identity that was unreachable shows it can be reached again.
    """
    now = timezone.now()
    row, _ = Identity.objects.update_or_create(
        channel=identity.channel,
        native_id=identity.native_id,
        defaults={
            "display_name": display_name[:200],
            "username": username[:200],
            "attributes": dict(identity.attributes),
            "isolation_key": identity.isolation_key,
            "last_seen_at": now,
            "unreachable_at": None,
            "unreachable_reason": "",
        },
    )
    return row


@dataclass(frozen=True, slots=True)
class Allowed:
    """The identity may start a turn."""


def authorize(*, identity: Identity) -> Allowed:
    """Whether `identity` may talk to the agent: the one place every channel's turns are decided.

    Everyone may, until operators can curate allowlists and link policies.
    """
    return Allowed()
