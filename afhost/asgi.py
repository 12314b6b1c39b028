"""The one ASGI entry point (daphne, uvicorn): Django, with the liveness probe answered before it,
the machine routes (the API, Telegram's webhook) through Django's handler without the browser
middleware (afhost.handlers), and
the routes anyone may POST a body to (the API, Telegram's webhook) behind a gate that checks the
caller before reading the body, and bounds it (afhost.handlers.guard), and the Invocations
WebSocket (a Channels consumer)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "afhost.settings")

django_application = get_asgi_application()

from django.urls import reverse  # noqa: E402

from afhost import heap  # noqa: E402
from afhost.checks import require_runtime_settings  # noqa: E402 (needs Django set up)
from afhost.handlers import ApiHandler, guard  # noqa: E402
from channels_app.invocations.consumers import InvocationsConsumer  # noqa: E402
from channels_app.telegram.views import WebhookGate  # noqa: E402
from channels_app.views import API_PREFIXES, ApiGate  # noqa: E402

# Fail at start-up, not on the first request, without a secret key or a loadable target.
require_runtime_settings()

# Routes anyone may send a body to: the caller is checked from the headers before it is read.
api_application = guard(ApiHandler(), ApiGate())
telegram_webhook_application = guard(ApiHandler(), WebhookGate())
TELEGRAM_WEBHOOK_PATH = reverse("channels_app:telegram_webhook")
invocations_ws_application = InvocationsConsumer.as_asgi()


async def refuse_websocket(receive, send) -> None:
    """A WebSocket to any other path: refused at the handshake (an HTTP 403)."""
    await receive()  # websocket.connect
    await send({"type": "websocket.close"})


async def application(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/healthz":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"status": "ok"}'})
        return
    if scope["type"] == "http" and scope["path"].startswith(API_PREFIXES):
        await api_application(scope, receive, send)
        return
    if scope["type"] == "websocket":
        if scope["path"] == "/invocations_ws":
            await invocations_ws_application(scope, receive, send)
        else:
            await refuse_websocket(receive, send)
        return
    if scope["type"] == "http" and scope["path"] == TELEGRAM_WEBHOOK_PATH:
        await telegram_webhook_application(scope, receive, send)
        return
    await django_application(scope, receive, send)


heap.settle()
