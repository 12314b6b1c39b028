"""The one ASGI entry point (daphne, uvicorn): Django, with the liveness probe answered before it
and the API routes through Django's handler without the browser middleware (afhost.handlers)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "afhost.settings")

django_application = get_asgi_application()

from afhost.checks import require_runtime_settings  # noqa: E402 (needs Django set up)
from afhost.handlers import ApiHandler  # noqa: E402
from channels_app.views import API_PREFIXES  # noqa: E402

# Fail at start-up, not on the first request, without a secret key or a loadable target.
require_runtime_settings()

api_application = ApiHandler()


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
    await django_application(scope, receive, send)
