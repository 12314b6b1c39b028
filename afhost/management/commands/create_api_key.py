from django.core.management.base import BaseCommand

from afhost.services import create_api_key


class Command(BaseCommand):
    help = (
        "Create an API key for the HTTP channels. The key is printed once, alone on the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="Who or what uses the key, e.g. 'billing-backend'.")
        parser.add_argument(
            "--trusted",
            action="store_true",
            help="Let this key name end users with x-agent-user-id / x-agent-user-isolation-key.",
        )

    def handle(self, *args, name: str, trusted: bool, **options):
        api_key, raw_key = create_api_key(name=name, is_trusted=trusted)
        kind = "trusted " if trusted else ""
        self.stderr.write(
            f"Created {kind}API key {api_key.name!r} ({api_key.public_id}). Store it now:"
        )
        self.stdout.write(raw_key)
