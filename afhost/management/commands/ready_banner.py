import io
import os
import sys
import time
from pathlib import Path

import httpx
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from afhost import about
from afhost.targets import MODEL_PRESETS
from linking.services import linking_enabled


class Command(BaseCommand):
    help = (
        "`make run`'s banner: wait until the server at --url answers /readyz, then print its "
        "URLs, the local API key (DEBUG only), the hosted agent and the channels that are on."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="The server's URL.")
        parser.add_argument(
            "--wait", type=float, default=120, help="Seconds to wait for /readyz (0: don't ask)."
        )

    def handle(self, *args, url: str, wait: float, **options):
        url = url.rstrip("/")
        if wait > 0:
            self._wait_until_ready(url, wait)
        self.stdout.write(self._banner(url))

    def _wait_until_ready(self, url: str, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise CommandError(f"{url}/readyz did not answer within {wait:g} s; see above.")
            time.sleep(0.2)

    def _banner(self, url: str) -> str:
        python = os.path.relpath(sys.executable)
        rows = [("Site", f"{url}/")]
        admin = f"{url}/admin/"
        if not get_user_model().objects.filter(is_superuser=True).exists():
            admin += f"  (first make a user: {python} manage.py createsuperuser)"
        rows.append(("Admin", admin))
        rows.append(("Responses API", f"{url}/v1/responses  (and {url}/v1/models)"))
        rows.append(("Invocations", f"{url}/invocations  (and the WebSocket /invocations_ws)"))
        if settings.DEBUG:
            key_file = settings.BASE_DIR / ".dev-api-key"
            out = io.StringIO()
            call_command("ensure_dev_api_key", file=str(key_file), stdout=out)
            rows.append(("API key", f"{out.getvalue().strip()}  (kept in {_shown(key_file)})"))
        else:
            rows.append(("API key", f"none made with DEBUG off: {python} manage.py create_api_key"))
        target = f"AFHOST_TARGET={settings.AFHOST_TARGET}"
        if settings.AFHOST_TARGET in MODEL_PRESETS:
            target += f", AFHOST_MODEL={settings.AFHOST_MODEL}"
        rows.append(("Agent", f"{about.hosted_model_id()}  ({target})"))
        telegram = about.telegram_mode()
        rows.append(
            (
                "Telegram",
                {
                    "webhook": f"webhook at {settings.AFHOST_PUBLIC_URL}"
                    f"{reverse('channels_app:telegram_webhook')}  (manage.py "
                    "set_telegram_webhook registers it)",
                    "polling": "polling  (manage.py telegram_poll; TELEGRAM_MODE=webhook for "
                    "the webhook)",
                    "off": "off  (set TELEGRAM_BOT_TOKEN to turn it on)",
                }[telegram],
            )
        )
        rows.append(
            (
                "Entra ID linking",
                "on" if linking_enabled() else "off  (set the ENTRA_* settings to turn it on)",
            )
        )
        width = max(len(name) for name, _ in rows)
        rule = "=" * 78
        return "\n".join(
            [
                rule,
                f"  afhost is ready at {url}/",
                "",
                *(f"  {name:<{width}}  {value}" for name, value in rows),
                "",
                "  Ctrl-C stops it all.",
                rule,
            ]
        )


def _shown(path: Path) -> str:
    """A path relative to the current directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
