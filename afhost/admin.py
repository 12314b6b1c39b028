from __future__ import annotations

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from afhost.models import ApiKey, Conversation, Run
from afhost.services import create_api_key, revoke_api_keys

_STATUS_COLOURS = {
    "queued": "#666",
    "in_progress": "#205493",
    "completed": "#2e7d32",
    "failed": "#c62828",
    "cancelled": "#8d6e63",
    "incomplete": "#ef6c00",
}


class PartitionFilter(admin.SimpleListFilter):
    """Which keys share a partition: "Own" for keys alone in theirs, then each named one."""

    title = "partition"
    parameter_name = "partition"
    OWN = "(own)"  # not a slug, so never a partition's name

    def lookups(self, request, model_admin):
        named = (
            ApiKey.objects.exclude(partition="")
            .order_by("partition")
            .values_list("partition", flat=True)
            .distinct()
        )
        return [(self.OWN, "Own"), *((name, name) for name in named)]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(partition="" if self.value() == self.OWN else self.value())


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "key_prefix",
        "is_trusted",
        "partition_name",
        "state",
        "created_at",
        "revoked_at",
    )
    list_filter = ("is_trusted", PartitionFilter, ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "public_id", "key_prefix", "partition")
    readonly_fields = ("public_id", "key_prefix", "created_at", "revoked_at")
    actions = ("revoke_selected",)

    @admin.display(description="State")
    def state(self, obj: ApiKey) -> str:
        return "revoked" if obj.revoked_at else "active"

    @admin.display(description="Partition", ordering="partition")
    def partition_name(self, obj: ApiKey) -> str:
        return obj.partition or PartitionFilter.OWN

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        api_key, raw_key = create_api_key(
            name=obj.name, is_trusted=obj.is_trusted, partition=obj.partition
        )
        obj.pk, obj.public_id = api_key.pk, api_key.public_id
        self.message_user(
            request,
            f"New API key for {api_key.name!r}: {raw_key} — copy it now, it is not shown again.",
        )

    @admin.action(description="Revoke selected API keys")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = revoke_api_keys(api_keys=queryset)
        self.message_user(request, f"Revoked {count} API key(s)")


class HasErrorFilter(admin.SimpleListFilter):
    """A "Has error / No error" filter; subclasses say what an error is in `error_condition`."""

    title = "error"
    parameter_name = "has_error"
    error_condition = Q(status=Run.Status.FAILED)

    def lookups(self, request, model_admin):
        return (("yes", "Has error"), ("no", "No error"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(self.error_condition)
        if self.value() == "no":
            return queryset.exclude(self.error_condition)
        return queryset


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = (
        "public_id",
        "channel",
        "status_badge",
        "is_background",
        "isolation_key",
        "created_at",
    )
    list_filter = ("status", "channel", "is_background", HasErrorFilter)
    search_fields = ("public_id", "isolation_key")
    raw_id_fields = ("conversation", "previous_run")
    list_select_related = ("conversation",)
    show_full_result_count = False
    readonly_fields = [field.name for field in Run._meta.fields]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Run]:
        return (
            super().get_queryset(request).defer("input_messages", "output_messages", "output_items")
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return False

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Run):
        colour = _STATUS_COLOURS.get(obj.status, "#666")
        return format_html('<b style="color:{}">{}</b>', colour, obj.get_status_display())


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("key", "channel", "isolation_key", "updated_at")
    list_filter = ("channel",)
    search_fields = ("public_id", "key", "isolation_key")
    raw_id_fields = ("head_run",)
    readonly_fields = (
        "public_id",
        "channel",
        "isolation_key",
        "key",
        "head_run",
        "created_at",
        "updated_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
