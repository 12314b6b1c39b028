"""The operator console for deliveries: what failed and why, and retrying or cancelling in bulk.

Rows are view-only; state changes only through the actions (POSTs), which call the services.
The change list stays fast with a million rows on PostgreSQL: it never counts the whole table
(a capped count), sorts only by `created_at` (indexed), filters on indexed columns or small
choice lists, and searches by indexed keys.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.contrib import admin
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import truncatechars
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html

from afhost.registry import pushing_channels
from delivery import selectors, services
from delivery.models import DeliveryAttempt, DeliveryTask
from linking.admin import OperatorActionsMixin

logger = logging.getLogger(__name__)

STATUS_COLOURS: dict[str, str] = {
    DeliveryTask.Status.PENDING: "#666",
    DeliveryTask.Status.SENDING: "#205493",
    DeliveryTask.Status.SENT: "#2e7d32",
    DeliveryTask.Status.FAILED: "#c62828",
    DeliveryTask.Status.CANCELLED: "#8d6e63",
    DeliveryTask.Status.INTERRUPTED: "#ef6c00",
}


def badge(task: DeliveryTask) -> str:
    colour = STATUS_COLOURS.get(task.status, "#666")
    return format_html(
        '<b class="delivery-status" style="color:{}">{}</b>', colour, task.get_status_display()
    )


class CappedCountPaginator(Paginator):
    """Counts at most COUNT_CAP rows: pages past them are not offered (narrow the filter)."""

    @cached_property
    def capped(self) -> selectors.Capped:
        return selectors.capped_count(self.object_list)  # type: ignore[arg-type]

    @cached_property
    def count(self) -> int:
        return self.capped.count


class OverdueFilter(admin.SimpleListFilter):
    title = "overdue"
    parameter_name = "overdue"

    def lookups(self, request, model_admin):
        return (("yes", "Pending, due over a minute ago"),)

    def queryset(self, request, queryset):
        if self.value() == "yes":
            late = timezone.now() - selectors.OVERDUE_AFTER
            return queryset.filter(status=DeliveryTask.Status.PENDING, next_attempt_at__lt=late)
        return queryset


class AttemptsFilter(admin.SimpleListFilter):
    title = "attempts"
    parameter_name = "attempts_over"

    def lookups(self, request, model_admin):
        return (("1", "More than 1"), ("3", "More than 3"))

    def queryset(self, request, queryset):
        if (value := self.value()) in ("1", "3"):
            return queryset.filter(attempts__gt=int(value))
        return queryset


class ChannelFilter(admin.SimpleListFilter):
    """The channels that push (not a DISTINCT over the table)."""

    title = "channel"
    parameter_name = "channel"

    def lookups(self, request, model_admin):
        return [(name, name) for name in sorted(pushing_channels())]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(channel=self.value())
        return queryset


class AgeFilter(admin.SimpleListFilter):
    title = "scheduled"
    parameter_name = "age"
    AGES = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}

    def lookups(self, request, model_admin):
        return (("hour", "Last hour"), ("day", "Last day"), ("week", "Last week"))

    def queryset(self, request, queryset):
        if (value := self.value()) in self.AGES:
            return queryset.filter(created_at__gte=timezone.now() - self.AGES[value])
        return queryset


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    fk_name = "task"
    fields = ("number", "outcome", "error", "started_at", "finished_at")
    readonly_fields = fields
    ordering = ("number",)
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(DeliveryTask)
class DeliveryTaskAdmin(OperatorActionsMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "status_badge",
        "short_error",
        "destination",
        "identity",
        "phase_code",
        "attempts_used",
        "response",
        "created_at",
        "sent_at",
    )
    list_display_links = ("id",)
    list_filter = ("status", OverdueFilter, AttemptsFilter, ChannelFilter, "phase", AgeFilter)
    list_select_related = ("identity", "run")
    search_fields = ("identity__native_id",)  # shows the box; get_search_results decides
    search_help_text = "A response id (resp_…), a person's native id or @username, or a chat id."
    ordering = ("-created_at",)
    sortable_by = ("created_at",)
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facet counts scan the table
    paginator = CappedCountPaginator
    list_per_page = 50
    fields = (
        "status_badge",
        "last_error",
        "destination",
        "channel",
        "phase",
        "locator",
        "identity",
        "run",
        "after",
        "attempts",
        "max_attempts",
        "next_attempt_at",
        "sent_parts",
        "sent_at",
        "created_at",
        "updated_at",
        "lease_owner",
        "lease_expires_at",
        "idempotency_key",
        "text",
    )
    readonly_fields = fields
    inlines = [DeliveryAttemptInline]
    actions = ("retry_selected", "cancel_selected")

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeliveryTask]:
        # select_related here too: the change list skips list_select_related once it is set.
        queryset = super().get_queryset(request).select_related(*self.list_select_related)
        return selectors.with_run(queryset.defer("text"))

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        return queryset.filter(selectors.search_condition(search_term)), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description="Status")
    def status_badge(self, obj: DeliveryTask) -> str:
        return badge(obj)

    @admin.display(description="Response")
    def response(self, obj: DeliveryTask) -> str:
        full = obj.run.response_id
        return format_html(
            '<a href="{}" title="{}">{}…</a>',
            reverse("admin:afhost_run_change", args=[obj.run_id]),
            full,
            full[:13],
        )

    @admin.display(description="Phase")
    def phase_code(self, obj: DeliveryTask) -> str:
        return obj.phase

    @admin.display(description="Attempts")
    def attempts_used(self, obj: DeliveryTask) -> str:
        return f"{obj.attempts}/{obj.max_attempts}"

    @admin.display(description="Last error")
    def short_error(self, obj: DeliveryTask) -> str:
        return truncatechars(obj.last_error, 60)

    @admin.action(description="Retry selected deliveries", permissions=["operate"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[DeliveryTask]) -> None:
        count = services.retry_deliveries(tasks=queryset)
        logger.info("%s retried %d delivery(ies)", request.user.get_username(), count)
        self.message_user(request, f"Retried {count} delivery(ies).")

    @admin.action(description="Cancel selected deliveries", permissions=["operate"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[DeliveryTask]) -> None:
        count = services.cancel_deliveries(tasks=queryset)
        logger.info("%s cancelled %d delivery(ies)", request.user.get_username(), count)
        self.message_user(request, f"Cancelled {count} delivery(ies).")
