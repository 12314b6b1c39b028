"""The home page, and the readiness endpoints for orchestrators and Azure AI Foundry.

Liveness (/healthz) is answered in asgi.py, before Django.
"""

from __future__ import annotations

import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from afhost import about

logger = logging.getLogger(__name__)
_migrations_checked = False


def _database_ready() -> str | None:
    """None when the database answers and has every migration applied, else the reason."""
    global _migrations_checked
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        if not _migrations_checked:
            executor = MigrationExecutor(connection)
            if executor.migration_plan(executor.loader.graph.leaf_nodes()):
                return "migrations pending"
            _migrations_checked = True  # migrations do not un-apply themselves
    except DatabaseError as exc:
        logger.warning("readiness: database unavailable: %s", exc)
        return "database unavailable"
    return None


async def readyz(request: HttpRequest) -> JsonResponse:
    problem = await sync_to_async(_database_ready)()
    if problem:
        return JsonResponse({"status": "unavailable", "reason": problem}, status=503)
    return JsonResponse({"status": "ready"})


async def readiness(request: HttpRequest) -> JsonResponse:
    """Azure AI Foundry's probe: the agent-server contract is `{"status": "healthy"}`."""
    problem = await sync_to_async(_database_ready)()
    if problem:
        return JsonResponse({"status": "unhealthy", "reason": problem}, status=503)
    return JsonResponse({"status": "healthy"})


@require_safe
async def home(request: HttpRequest) -> HttpResponse:
    """What this server hosts: the agent, the channels and where they are reached."""
    base_url = request.build_absolute_uri("/").rstrip("/")
    context = {
        "target": settings.AFHOST_TARGET,
        "model_id": about.hosted_model_id(),
        "channels": about.channels(base_url),
        "base_url": base_url,
    }
    return render(request, "afhost/home.html", context)


@require_safe
async def favicon(request: HttpRequest) -> HttpResponse:
    """No icon, said without a 404 (browsers ask for it on every admin page)."""
    response = HttpResponse(status=204)
    response["Cache-Control"] = "max-age=86400"
    return response
