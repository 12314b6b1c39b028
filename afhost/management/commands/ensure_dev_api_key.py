from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from afhost.models import ApiKey
from afhost.services import create_api_key

DEV_KEY_NAME = "local development"


class Command(BaseCommand):
    help = "DEBUG only: ensure the local development API key (in .dev-api-key) exists; print it."

    def add_arguments(self, parser):
        parser.add_argument("--file", default=str(settings.BASE_DIR / ".dev-api-key"))

    def handle(self, *args, file: str, **options):
        if not settings.DEBUG:
            raise CommandError(
                "ensure_dev_api_key only runs with DEBUG on; use create_api_key instead."
            )
        path = Path(file)
        raw_key = path.read_text().strip() if path.exists() else ""
        if not raw_key or ApiKey.objects.for_raw_key(raw_key) is None:
            _, raw_key = create_api_key(name=DEV_KEY_NAME)
            path.write_text(raw_key + "\n")
            path.chmod(0o600)
        self.stdout.write(raw_key)
