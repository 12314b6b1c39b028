"""Telegram's webhook: check the secret, store the update, acknowledge at once."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from afhost.db import db_call
from afhost.handlers import declared_length
from channels_app.decorators import require_setting
from channels_app.telegram.services import InvalidUpdate, receive_update

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)


# Telegram's updates are small: a larger body is not one of them.
MAX_UPDATE_BYTES = 1024 * 1024


def _secret_matches(given: str) -> bool:
    """In constant time, whatever the value sent."""
    expected = settings.TELEGRAM_WEBHOOK_SECRET.encode()
    return bool(expected) and hmac.compare_digest(given.encode(), expected)


def _unauthorized() -> JsonResponse:
    return JsonResponse({"ok": False, "description": "Unauthorized"}, status=401)


class WebhookGate:
    """What the webhook refuses before reading a body (afhost.handlers.guard): a request
    without the secret header (401), and a body declared or growing over MAX_UPDATE_BYTES
    (413). Anyone may POST to a public URL; nobody else's body is read, or spooled to disk."""

    max_body_bytes = MAX_UPDATE_BYTES

    async def check(self, scope: dict, headers: Mapping[str, str]) -> HttpResponse | None:
        if scope["method"] != "POST" or not settings.TELEGRAM_BOT_TOKEN:
            return None  # the view answers: 405, or 404 when the channel is off
        if not _secret_matches(headers.get(SECRET_HEADER.lower(), "")):
            return _unauthorized()
        if (declared_length(headers) or 0) > MAX_UPDATE_BYTES:
            return self.refuse_body(413)
        return None

    def refuse_body(self, status: int) -> HttpResponse:
        if status == 413:
            return JsonResponse({"ok": False, "description": "Update too large"}, status=413)
        return JsonResponse({"ok": False, "description": "Request timeout"}, status=408)


@csrf_exempt
@require_POST
@require_setting("TELEGRAM_BOT_TOKEN")
async def telegram_webhook(request: HttpRequest) -> HttpResponse:
    if not _secret_matches(request.headers.get(SECRET_HEADER, "")):
        return _unauthorized()
    # Every update gets a decision and a log line: a 4xx for one we will never store (Telegram
    # would retry a 500 forever), a JSON 500 only for our own failure, which a retry may cure.
    try:
        payload = json.loads(request.body)
        if not isinstance(payload, dict):
            raise InvalidUpdate("an update is a JSON object")
        await db_call(receive_update)(payload=payload)
    except RequestDataTooBig as exc:
        logger.warning("oversized telegram update rejected: %s", exc)
        return JsonResponse({"ok": False, "description": "Update too large"}, status=413)
    # InvalidUpdate, JSONDecodeError and UnicodeDecodeError are ValueErrors.
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        logger.warning("malformed telegram update rejected: %s", reason)
        return JsonResponse({"ok": False, "description": f"Malformed update: {reason}"}, status=400)
    except (OperationalError, InterfaceError) as exc:  # the database is down or unreachable
        logger.warning("telegram update not stored, the database is unavailable (%s): 503", exc)
        response = JsonResponse({"ok": False, "description": "Unavailable, retry"}, status=503)
        response["Retry-After"] = "1"
        return response
    except Exception:
        logger.exception("telegram update not stored: answering 500 so that Telegram retries it")
        return JsonResponse({"ok": False, "description": "Internal error"}, status=500)
    return JsonResponse({"ok": True})
