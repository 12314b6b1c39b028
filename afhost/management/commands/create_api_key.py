from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

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
        parser.add_argument(
            "--partition",
            default="",
            metavar="NAME",
            help="Share the partition NAME (letters, digits, - and _) with the keys that name it: "
            "they see the same end users' responses. Default: the key's own partition.",
        )

    def handle(self, *args, name: str, trusted: bool, partition: str, **options):
        try:
            api_key, raw_key = create_api_key(name=name, is_trusted=trusted, partition=partition)
        except ValidationError as error:
            problems = (
                f"{field}: {message}"
                for field, messages in error.message_dict.items()
                for message in messages
            )
            raise CommandError("; ".join(problems)) from error
        kind = "trusted " if trusted else ""
        where = f" in partition {partition!r}" if partition else ""
        self.stderr.write(
            f"Created {kind}API key {api_key.name!r} ({api_key.public_id}){where}. Store it now:"
        )
        self.stdout.write(raw_key)
