"""Who talks to the agent, and whether they may.

One `Identity` per (channel, native id), e.g. Telegram user 42. A `LinkGrant` binds an identity
to a Microsoft Entra ID principal, proven by signing in (the link ceremony) or by an access
token; identities whose grants name the same principal are one person. Operators decide who may
start a turn per channel (`ChannelPolicy`) with allowlists of native ids and of verified claims.
"""

from __future__ import annotations

import hashlib
import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from afhost.db import unique_or_none
from afhost.models import TimestampedModel, alters_data


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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
    # Set by an operator: every turn of this person is refused.
    blocked_at = models.DateTimeField(null=True, blank=True)
    blocked_by = models.CharField(max_length=200, blank=True)
    # Turns refused (denied or link required), the last one and why.
    refusals = models.PositiveIntegerField(default=0)
    last_refused_at = models.DateTimeField(null=True, blank=True)
    last_refusal = models.CharField(max_length=300, blank=True)

    # True on the instance touch_identity has just created, until it is linked: it has no link
    # and belongs to no chat yet, so a person's first message need not look for them.
    is_new = False

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

    @alters_data
    def mark_unreachable(self, reason: str) -> None:
        now = timezone.now()
        Identity.objects.filter(pk=self.pk).update(
            unreachable_at=now, unreachable_reason=reason[:300], updated_at=now
        )
        self.unreachable_at, self.unreachable_reason = now, reason[:300]

    @alters_data
    def record_refusal(self, reason: str) -> None:
        now = timezone.now()
        Identity.objects.filter(pk=self.pk).update(
            refusals=F("refusals") + 1,
            last_refused_at=now,
            last_refusal=reason[:300],
            updated_at=now,
        )
        self.last_refused_at, self.last_refusal = now, reason[:300]

    @alters_data
    def block(self, *, by: str) -> None:
        now = timezone.now()
        Identity.objects.filter(pk=self.pk, blocked_at__isnull=True).update(
            blocked_at=now, blocked_by=by[:200], updated_at=now
        )
        self.blocked_at, self.blocked_by = now, by[:200]

    @alters_data
    def unblock(self) -> None:
        Identity.objects.filter(pk=self.pk).update(
            blocked_at=None, blocked_by="", updated_at=timezone.now()
        )
        self.blocked_at, self.blocked_by = None, ""


class LinkGrantQuerySet(models.QuerySet["LinkGrant"]):
    def active(self) -> LinkGrantQuerySet:
        return self.filter(revoked_at__isnull=True)

    def held_by(self, identity: Identity) -> LinkGrant | None:
        """The identity's active link, if it has one (one at most: a constraint); an identity
        created by this request has none, and is not looked up."""
        if identity.is_new:
            return None
        return unique_or_none(self.active().filter(identity=identity))


class LinkGrant(TimestampedModel):
    """An identity bound to an Entra ID principal, with the claims verified when it was made."""

    class Source(models.TextChoices):
        CEREMONY = "ceremony", "Signed in with Entra ID"
        TOKEN = "token", "Entra access token"

    identity = models.ForeignKey(Identity, on_delete=models.CASCADE, related_name="grants")
    provider = models.CharField(max_length=32, default="entra")
    tenant_id = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64, help_text="The principal's Entra object id (oid).")
    upn = models.CharField("sign-in name", max_length=300, blank=True)
    name = models.CharField(max_length=300, blank=True)
    # Verified claims: tid, oid, upn, email, groups, roles.
    claims = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    linked_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.CharField(max_length=200, blank=True)

    objects = LinkGrantQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["identity"],
                condition=Q(revoked_at__isnull=True),
                name="linking_grant_one_active_per_identity",
            ),
        ]
        indexes = [models.Index(fields=["tenant_id", "object_id"])]

    def __str__(self) -> str:
        return f"{self.identity} → {self.upn or self.object_id}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @alters_data
    def revoke(self, *, by: str) -> bool:
        """Revoke the grant; False when it was revoked already."""
        now = timezone.now()
        revoked = LinkGrant.objects.filter(pk=self.pk, revoked_at__isnull=True).update(
            revoked_at=now, revoked_by=by[:200], updated_at=now
        )
        if revoked:
            self.revoked_at, self.revoked_by = now, by[:200]
        return bool(revoked)


class LinkChallenge(TimestampedModel):
    """A one-time invitation for an identity to prove who they are by signing in.

    Only the token's digest is stored. The first browser session that opens the link claims it;
    it is redeemed at most once, before it expires.
    """

    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    identity = models.ForeignKey(Identity, on_delete=models.CASCADE, related_name="challenges")
    # Where the channel confirms the link (e.g. {"chat_id": 42, "thread_id": null}).
    notify = models.JSONField(default=dict, blank=True)
    expires_at = models.DateTimeField()
    session_hash = models.CharField(max_length=64, blank=True, editable=False)
    # The person asked to replace the principal their identity is linked to.
    relink = models.BooleanField(default=False)
    redeemed_at = models.DateTimeField(null=True, blank=True)
    grant = models.OneToOneField(
        LinkGrant, null=True, blank=True, on_delete=models.SET_NULL, related_name="challenge"
    )
    failure = models.CharField(max_length=300, blank=True)

    def __str__(self) -> str:
        return f"link challenge for {self.identity}"

    @property
    def is_open(self) -> bool:
        return self.redeemed_at is None and self.expires_at > timezone.now()


class Allowlist(TimestampedModel):
    """Who may talk to the agent: entries combined by any-of or all-of."""

    class Combine(models.TextChoices):
        ANY_OF = "any_of", "Any of the entries"
        ALL_OF = "all_of", "All of the entries"

    name = models.CharField(max_length=100, unique=True)
    combine = models.CharField(max_length=8, choices=Combine.choices, default=Combine.ANY_OF)
    description = models.TextField(blank=True)

    def __str__(self) -> str:
        return self.name


class AllowlistEntry(TimestampedModel):
    class Kind(models.TextChoices):
        NATIVE_ID = "native_id", "Channel user id"
        CLAIM = "claim", "Verified Entra claim (needs a linked account)"
        ALLOWLIST = "allowlist", "Another allowlist"

    class Claim(models.TextChoices):
        TENANT = "tid", "Tenant id"
        GROUP = "groups", "Group object id"
        ROLE = "roles", "App role"
        EMAIL_DOMAIN = "email_domain", "Email domain"
        UPN = "upn", "Sign-in name (UPN)"

    allowlist = models.ForeignKey(Allowlist, on_delete=models.CASCADE, related_name="entries")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    channel = models.CharField(max_length=32, blank=True, help_text="For a channel user id.")
    claim = models.CharField(max_length=16, choices=Claim.choices, blank=True)
    value = models.CharField(max_length=300, blank=True)
    member = models.ForeignKey(
        Allowlist,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="memberships",
        help_text="For another allowlist.",
    )

    class Meta:
        verbose_name_plural = "allowlist entries"

    def __str__(self) -> str:
        if self.kind == self.Kind.NATIVE_ID:
            return f"{self.channel} user {self.value}"
        if self.kind == self.Kind.CLAIM:
            return f"{self.get_claim_display()} = {self.value}"
        return f"allowlist {self.member}"

    def clean(self) -> None:
        # An entry without a kind has its field error already.
        by_kind: dict[str, tuple[str, ...]] = {
            self.Kind.NATIVE_ID: ("channel", "value"),
            self.Kind.CLAIM: ("claim", "value"),
            self.Kind.ALLOWLIST: ("member",),
        }
        required = by_kind.get(self.kind, ())
        missing = {
            name: "Required for this kind of entry." for name in required if not getattr(self, name)
        }
        if missing:
            raise ValidationError(missing)
        if (
            self.kind == self.Kind.ALLOWLIST
            and self.allowlist_id
            and self.member_id
            and _reaches(self.member_id, self.allowlist_id)
        ):
            raise ValidationError({"member": "An allowlist cannot contain itself."})


def _reaches(start: int, target: int) -> bool:
    """Whether allowlist `start` is `target` or contains it, at any depth."""
    seen, todo = set(), [start]
    while todo:
        pk = todo.pop()
        if pk == target:
            return True
        if pk not in seen:
            seen.add(pk)
            todo.extend(
                AllowlistEntry.objects.filter(allowlist_id=pk, member__isnull=False).values_list(
                    "member_id", flat=True
                )
            )
    return False


class ChannelPolicy(TimestampedModel):
    """Who may talk to the agent on one channel, and (Telegram) how it listens in groups.

    A channel without a policy is open to everyone.
    """

    class ConversationScope(models.TextChoices):
        PER_USER_PER_CONVERSATION = "per_user_per_conversation", "Per user, per chat or topic"
        PER_USER = "per_user", "Per user, across chats"
        PER_CONVERSATION = "per_conversation", "Per chat or topic, shared by its members"

    class AcceptInGroup(models.TextChoices):
        MENTION_ONLY = "mention_only", "When mentioned or replied to"
        COMMAND_ONLY = "command_only", "On /ask only"
        MENTION_OR_COMMAND = "mention_or_command", "When mentioned, replied to, or on /ask"
        ALL = "all", "Every message"

    channel = models.CharField(max_length=32, unique=True)
    require_link = models.BooleanField(
        default=False, help_text="Everyone must link an Entra ID account first."
    )
    allowlist = models.ForeignKey(
        Allowlist,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="policies",
        help_text="Who may talk to the agent here; empty for everyone.",
    )
    conversation_scope = models.CharField(
        max_length=32,
        choices=ConversationScope.choices,
        blank=True,
        help_text="Telegram; empty for TELEGRAM_CONVERSATION_SCOPE.",
    )
    accept_in_group = models.CharField(
        max_length=32,
        choices=AcceptInGroup.choices,
        blank=True,
        help_text="Telegram; empty for TELEGRAM_ACCEPT_IN_GROUP.",
    )

    class Meta:
        verbose_name_plural = "channel policies"

    def __str__(self) -> str:
        return f"{self.channel} policy"
