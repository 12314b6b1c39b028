"""The delivery dashboard: an admin page with the figures of the last hour, refreshed by a small
script from its JSON twin."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from delivery.models import DeliveryTask
from delivery.selectors import DeliveryStats, delivery_stats

# How often the open dashboard asks for fresh figures.
REFRESH_SECONDS = 5
CHART_HEIGHT = 120
BAR_WIDTH = 10


def _require_view_permission(request: HttpRequest) -> None:
    if not request.user.has_perm("delivery.view_deliverytask"):
        raise PermissionDenied


def _chart(stats: DeliveryStats) -> list[dict[str, Any]]:
    """The bars of the per-minute chart: failed stacked on sent, scaled to the busiest minute."""
    scale = CHART_HEIGHT / max(stats.busiest_minute, 1)
    bars = []
    for index, minute in enumerate(stats.minutes):
        sent, failed = minute.sent * scale, minute.failed * scale
        bars.append(
            {
                "minute": minute,
                "x": index * BAR_WIDTH,
                "sent_y": round(CHART_HEIGHT - sent, 1),
                "sent_height": round(sent, 1),
                "failed_y": round(CHART_HEIGHT - sent - failed, 1),
                "failed_height": round(failed, 1),
            }
        )
    return bars


def _figures(stats: DeliveryStats) -> dict[str, Any]:
    return {
        "stats": stats,
        "statuses": DeliveryTask.Status.choices,
        "bars": _chart(stats),
        "chart_width": BAR_WIDTH * len(stats.minutes),
        "chart_height": CHART_HEIGHT,
    }


@never_cache
@require_GET
@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    _require_view_permission(request)
    context = {
        **admin.site.each_context(request),
        "title": "Delivery dashboard",
        "refresh_seconds": REFRESH_SECONDS,
        **_figures(delivery_stats()),
    }
    return render(request, "delivery/dashboard.html", context)


@never_cache
@require_GET
@staff_member_required
def dashboard_json(request: HttpRequest) -> JsonResponse:
    """The figures, and the dashboard's part that shows them rendered (the page swaps it in)."""
    _require_view_permission(request)
    stats = delivery_stats()
    html = render_to_string("delivery/_dashboard_figures.html", _figures(stats), request=request)
    return JsonResponse({"stats": stats.as_dict(), "html": html})
