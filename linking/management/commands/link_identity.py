from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from linking import services
from linking.models import Identity


class Command(BaseCommand):
    help = (
        "Print a one-time link with which the person behind an identity links their Entra ID "
        "account (what the bot's /link sends), e.g. to invite a Telegram user by id."
    )

    def add_arguments(self, parser):
        parser.add_argument("channel", help="The identity's channel, e.g. telegram.")
        parser.add_argument("native_id", help="Its id there, e.g. a Telegram user id.")

    def handle(self, *args, channel: str, native_id: str, **options):
        if not services.linking_enabled():
            raise CommandError(
                "Linking is off: set ENTRA_TENANT_ID, ENTRA_CLIENT_ID and ENTRA_CLIENT_SECRET."
            )
        identity, created = Identity.objects.get_or_create(
            channel=channel,
            native_id=native_id,
            defaults={"isolation_key": f"{channel}:{native_id}"},
        )
        url = services.begin_link(identity=identity, notify={})
        self.stderr.write(
            f"{'New' if created else 'Known'} identity {identity}: the link works once, in one "
            f"browser, for {settings.LINK_CHALLENGE_MINUTES} minutes."
        )
        self.stdout.write(url)
