"""Linking settings and channel policies that cannot work as configured: reported by
`manage.py check` and on the admin index (`problems`).

The policy checks read the database; before `migrate` has made the tables they report nothing.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register, run_checks
from django.db import DatabaseError

from linking import rules
from linking.models import Allowlist, ChannelPolicy
from linking.services import identity_channels, linking_enabled, load_rule

TAG = "linking"
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_ENTRA_SETTINGS = ("ENTRA_TENANT_ID", "ENTRA_CLIENT_ID", "ENTRA_CLIENT_SECRET")


def problems() -> list[CheckMessage]:
    """This app's check messages that are not silenced, for the admin to show."""
    return [message for message in run_checks(tags=[TAG]) if not message.is_silenced()]


@register(TAG)
def check_entra_settings(app_configs, **kwargs) -> list[CheckMessage]:
    found: list[CheckMessage] = []
    if settings.ENTRA_TENANT_ID and not _GUID.fullmatch(settings.ENTRA_TENANT_ID):
        found.append(
            Error(
                f"ENTRA_TENANT_ID {settings.ENTRA_TENANT_ID!r} is not a GUID.",
                hint="Use the directory (tenant) id from the Entra admin center, not a domain: "
                "signed-in accounts are matched on their tenant id.",
                id="linking.E001",
            )
        )
    missing = [name for name in _ENTRA_SETTINGS if not getattr(settings, name)]
    if 0 < len(missing) < len(_ENTRA_SETTINGS):
        found.append(
            Warning(
                f"Linking is partly configured: {', '.join(missing)} not set, so linking is off.",
                hint="Set all of ENTRA_TENANT_ID, ENTRA_CLIENT_ID and ENTRA_CLIENT_SECRET "
                "(see .env.example), or none.",
                id="linking.W001",
            )
        )
    return found


@register(TAG)
def check_channel_policies(app_configs, **kwargs) -> list[CheckMessage]:
    try:
        policies = list(ChannelPolicy.objects.select_related("allowlist").order_by("channel"))
        known, linking = identity_channels(), linking_enabled()
        return [
            message
            for policy in policies
            for message in _policy_problems(policy, known=known, linking=linking)
        ]
    except DatabaseError:  # not migrated yet
        return []


def _policy_problems(
    policy: ChannelPolicy, *, known: list[str], linking: bool
) -> list[CheckMessage]:
    found: list[CheckMessage] = []
    if policy.channel not in known:
        found.append(
            Error(
                f"The policy names channel {policy.channel!r}, which no identity belongs to.",
                hint=f"Known channels: {', '.join(known)}.",
                obj=policy,
                id="linking.E003",
            )
        )
    allowlist = policy.allowlist
    if not linking:
        if policy.require_link:
            needs = "requires a linked account"
        elif allowlist is not None and rules.needs_claims(load_rule(allowlist)):
            needs = f"uses allowlist {allowlist.name!r}, which checks verified claims"
        else:
            needs = ""
        if needs:
            found.append(
                Error(
                    f"The {policy.channel} policy {needs}, but linking is off: every turn on "
                    f"{policy.channel} is refused.",
                    hint="Set ENTRA_TENANT_ID, ENTRA_CLIENT_ID and ENTRA_CLIENT_SECRET, or change "
                    "the policy.",
                    obj=policy,
                    id="linking.E002",
                )
            )
    if allowlist is not None and not allowlist.entries.exists():
        everyone = "allows" if allowlist.combine == Allowlist.Combine.ALL_OF else "denies"
        found.append(
            Warning(
                f"Allowlist {allowlist.name!r} of the {policy.channel} policy has no entries: it "
                f"{everyone} everyone.",
                hint="Add entries, or take the allowlist off the policy to let everyone in.",
                obj=policy,
                id="linking.W002",
            )
        )
    return found
