"""The operator console for who may talk to the agent: identities and their links, allowlists,
channel policies, and the change history of every admin action."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.models import LogEntry
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, NullIf
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from social_django.models import Association, Code, Nonce, Partial, UserSocialAuth

from linking import checks, services
from linking.models import (
    Allowlist,
    AllowlistEntry,
    ChannelPolicy,
    Identity,
    LinkChallenge,
    LinkGrant,
)


def _operator(request: HttpRequest) -> str:
    return f"operator {request.user.get_username()}"


class YesNoFilter(admin.SimpleListFilter):
    """A yes/no filter; subclasses say what "yes" is in `condition`."""

    labels = ("Yes", "No")

    def condition(self) -> Q:
        raise NotImplementedError

    def lookups(self, request, model_admin):
        return (("yes", self.labels[0]), ("no", self.labels[1]))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(self.condition())
        if self.value() == "no":
            return queryset.exclude(self.condition())
        return queryset


class LinkedFilter(YesNoFilter):
    title = "linked"
    parameter_name = "linked"

    def condition(self) -> Q:
        return Q(Exists(LinkGrant.objects.active().filter(identity=OuterRef("pk"))))


class BlockedFilter(YesNoFilter):
    title = "blocked"
    parameter_name = "blocked"

    def condition(self) -> Q:
        return Q(blocked_at__isnull=False)


class RefusedFilter(YesNoFilter):
    title = "refused"
    parameter_name = "refused"
    labels = ("Refused at least once", "Never refused")

    def condition(self) -> Q:
        return Q(refusals__gt=0)


class ActiveGrantFilter(YesNoFilter):
    title = "state"
    parameter_name = "active"
    labels = ("Active", "Revoked")

    def condition(self) -> Q:
        return Q(revoked_at__isnull=True)


class LinkGrantInline(admin.TabularInline):
    model = LinkGrant
    fields = (
        "source",
        "upn",
        "tenant_id",
        "object_id",
        "claims",
        "linked_at",
        "revoked_at",
        "revoked_by",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-linked_at",)

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class OperatorActionsMixin:
    """Read-only rows, with actions (`permissions=["operate"]`) for who may change the model."""

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        opts = self.opts  # type: ignore[attr-defined]
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")


@admin.register(Identity)
class IdentityAdmin(OperatorActionsMixin, admin.ModelAdmin):
    list_display = (
        "__str__",
        "native_id",
        "linked_as",
        "last_seen_at",
        "refusals",
        "last_refused_at",
        "is_blocked",
    )
    list_filter = (
        "channel",
        LinkedFilter,
        BlockedFilter,
        RefusedFilter,
        ("unreachable_at", admin.EmptyFieldListFilter),
    )
    search_fields = (
        "public_id",
        "native_id",
        "username",
        "display_name",
        "isolation_key",
        "grants__upn",
    )
    readonly_fields = (
        "public_id",
        "channel",
        "native_id",
        "display_name",
        "username",
        "attributes",
        "isolation_key",
        "same_person",
        "last_seen_at",
        "unreachable_at",
        "unreachable_reason",
        "blocked_at",
        "blocked_by",
        "refusals",
        "last_refused_at",
        "last_refusal",
        "created_at",
        "updated_at",
    )
    fields = readonly_fields
    inlines = [LinkGrantInline]
    actions = ("block_selected", "unblock_selected", "revoke_links")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Identity]:
        active = LinkGrant.objects.active().filter(identity=OuterRef("pk"))
        label = Coalesce(NullIf("upn", Value("")), "object_id")
        return (
            super()
            .get_queryset(request)
            .annotate(linked_label=Subquery(active.annotate(label=label).values("label")[:1]))
        )

    @admin.display(description="Linked as", ordering="linked_label")
    def linked_as(self, obj: Identity) -> str:
        return obj.linked_label or ""  # type: ignore[attr-defined]

    @admin.display(description="Blocked", boolean=True, ordering="blocked_at")
    def is_blocked(self, obj: Identity) -> bool:
        return obj.blocked_at is not None

    @admin.display(description="Same person")
    def same_person(self, obj: Identity) -> str:
        others = [each for each in services.person_of(obj).identities if each.pk != obj.pk]
        if not others:
            return "—"
        return format_html_join(
            ", ",
            '<a href="{}">{}</a>',
            ((reverse("admin:linking_identity_change", args=[each.pk]), each) for each in others),
        )

    @admin.action(description="Block", permissions=["operate"])
    def block_selected(self, request: HttpRequest, queryset: QuerySet[Identity]) -> None:
        identities = list(queryset.filter(blocked_at__isnull=True))
        for identity in identities:
            identity.block(by=request.user.get_username())
            self.log_change(request, identity, "Blocked")
        self.message_user(request, f"Blocked: {len(identities)}.")

    @admin.action(description="Unblock", permissions=["operate"])
    def unblock_selected(self, request: HttpRequest, queryset: QuerySet[Identity]) -> None:
        identities = list(queryset.filter(blocked_at__isnull=False))
        for identity in identities:
            identity.unblock()
            self.log_change(request, identity, "Unblocked")
        self.message_user(request, f"Unblocked: {len(identities)}.")

    @admin.action(description="Revoke links", permissions=["operate"])
    def revoke_links(self, request: HttpRequest, queryset: QuerySet[Identity]) -> None:
        count = 0
        for identity in queryset:
            grant = services.unlink(identity=identity, by=_operator(request))
            if grant is not None:
                self.log_change(
                    request, identity, f"Revoked link to {grant.upn or grant.object_id}"
                )
                count += 1
        self.message_user(request, f"Links revoked: {count}.")


@admin.register(LinkGrant)
class LinkGrantAdmin(OperatorActionsMixin, admin.ModelAdmin):
    list_display = (
        "identity",
        "upn",
        "tenant_id",
        "source",
        "linked_at",
        "revoked_at",
        "revoked_by",
    )
    list_filter = (ActiveGrantFilter, "source")
    search_fields = ("upn", "object_id", "tenant_id", "identity__native_id", "identity__username")
    list_select_related = ("identity",)
    raw_id_fields = ("identity",)
    readonly_fields = [field.name for field in LinkGrant._meta.fields]
    actions = ("revoke_selected",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.action(description="Revoke", permissions=["operate"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[LinkGrant]) -> None:
        count = 0
        for grant in queryset.active():  # type: ignore[attr-defined]
            if grant.revoke(by=_operator(request)):
                self.log_change(request, grant, "Revoked")
                count += 1
        self.message_user(request, f"Links revoked: {count}.")


@admin.register(LinkChallenge)
class LinkChallengeAdmin(admin.ModelAdmin):
    list_display = ("identity", "created_at", "expires_at", "redeemed_at", "failure")
    list_filter = (("redeemed_at", admin.EmptyFieldListFilter),)
    search_fields = ("identity__native_id", "identity__username", "failure")
    list_select_related = ("identity",)
    fields = (
        "identity",
        "notify",
        "relink",
        "created_at",
        "expires_at",
        "redeemed_at",
        "grant",
        "failure",
    )
    readonly_fields = fields
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class ProblemsOnChangelistMixin:
    """The configuration problems of linking (linking.checks), shown above the change list."""

    def changelist_view(self, request: HttpRequest, extra_context=None):
        if request.method == "GET":
            for problem in checks.problems():
                level = messages.ERROR if problem.is_serious() else messages.WARNING
                messages.add_message(request, level, f"{problem.msg} ({problem.id})")
        return super().changelist_view(request, extra_context)  # type: ignore[misc]


class AllowlistEntryInline(admin.TabularInline):
    model = AllowlistEntry
    fk_name = "allowlist"
    fields = ("kind", "channel", "claim", "value", "member")
    extra = 1


@admin.register(Allowlist)
class AllowlistAdmin(ProblemsOnChangelistMixin, admin.ModelAdmin):
    list_display = ("name", "combine", "description", "used_by")
    list_filter = ("combine",)
    search_fields = ("name", "description")
    fields = ("name", "combine", "description", "used_by")
    readonly_fields = ("used_by",)
    inlines = [AllowlistEntryInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Allowlist]:
        return super().get_queryset(request).prefetch_related("policies")

    @admin.display(description="Used by")
    def used_by(self, obj: Allowlist) -> str:
        return ", ".join(str(policy) for policy in obj.policies.all()) or "—"


class ChannelPolicyForm(forms.ModelForm):
    channel = forms.ChoiceField(help_text="The channel of the identities this policy decides on.")

    class Meta:
        model = ChannelPolicy
        fields = ("channel", "require_link", "allowlist", "conversation_scope", "accept_in_group")
        help_texts = {
            "conversation_scope": "Telegram only: whose conversation a message continues. "
            "Empty for the TELEGRAM_CONVERSATION_SCOPE setting.",
            "accept_in_group": "Telegram only: which group messages the agent answers. "
            "Empty for the TELEGRAM_ACCEPT_IN_GROUP setting.",
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        choices = [(name, name) for name in services.identity_channels()]
        current = self.instance.channel
        if current and current not in dict(choices):
            choices.append((current, f"{current} (unknown channel)"))
        self.fields["channel"].choices = choices  # type: ignore[attr-defined]


@admin.register(ChannelPolicy)
class ChannelPolicyAdmin(ProblemsOnChangelistMixin, admin.ModelAdmin):
    form = ChannelPolicyForm
    list_display = (
        "channel",
        "require_link",
        "allowlist",
        "conversation_scope",
        "accept_in_group",
        "updated_at",
    )
    list_filter = ("require_link",)
    list_select_related = ("allowlist",)


# Linking never creates Django users or social-auth associations: nothing to show of them.
for _model in (Association, Nonce, UserSocialAuth, Partial, Code):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)


@admin.register(LogEntry)
class ChangeHistoryAdmin(admin.ModelAdmin):
    """Who changed what in the admin, and when (Django's own log of admin changes)."""

    list_display = ("action_time", "user", "object_link", "action", "message")
    list_filter = ("user", "content_type")
    search_fields = ("object_repr", "change_message", "user__username")
    list_select_related = ("user", "content_type")
    date_hierarchy = "action_time"
    fields = (
        "action_time",
        "user",
        "content_type",
        "object_id",
        "object_link",
        "action",
        "message",
    )
    readonly_fields = fields
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context=None):
        return super().changelist_view(
            request, {"title": "Change history", **(extra_context or {})}
        )

    @admin.display(description="Object", ordering="object_repr")
    def object_link(self, obj: LogEntry) -> str:
        url = None if obj.is_deletion() else obj.get_admin_url()
        if url:
            return format_html('<a href="{}">{}</a>', url, obj.object_repr)
        return obj.object_repr

    @admin.display(description="Action", ordering="action_flag")
    def action(self, obj: LogEntry) -> str:
        return obj.get_action_flag_display()

    @admin.display(description="Change message")
    def message(self, obj: LogEntry) -> str:
        return obj.get_change_message()
