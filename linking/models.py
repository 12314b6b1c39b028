"""Who talks to the agent: one Identity per (channel, native id), e.g. Telegram user 42."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from afhost.models import TimestampedModel


class Identity(TimestampedModel):
    public_id = models.UUIDField(default=uuid.uuid4, editable=False, unique=True)
    channel = models.CharField(max_length=32)
    native_id = models.CharField(max_length=300)
    display_name = models.CharField(max_length=200, blank=True)
    username = models.CharField(max_length=200, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    isolation_key = models.CharField(max_length=300)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # Set when the channel refuses to deliver to this identity (e.g. the user blocked the bot).
    unreachable_at = models.DateTimeField(null=True, blank=True)
    unreachable_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        verbose_name_plural = "identities"
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "native_id"], name="linking_identity_unique_native"
            ),
        ]

    def __str__(self) -> str:
        label = f"@{self.username}" if self.username else self.display_name or self.native_id
        return f"{self.channel}:{label}"

    def mark_unreachable(self, reason: str) -> None:
        now = timezone.now()
        Identity.objects.filter(pk=self.pk).update(
            unreachable_at=now, unreachable_reason=reason[:300], updated_at=now
        )
        self.unreachable_at, self.unreachable_reason = now, reason[:300]

    mark_unreachable.alters_data = True
