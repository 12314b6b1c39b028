import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from afhost.db import in_thread
from channels_app.telegram.processing import make_bot
from channels_app.telegram.services import ALLOWED_UPDATES, receive_update


class Command(BaseCommand):
    help = (
        "Development without a public URL: remove the webhook and long-poll Telegram, feeding "
        "updates into the same inbox the webhook uses (a worker answers them). Ctrl-C stops."
    )

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=int, default=25, help="Long-poll timeout in seconds.")
        parser.add_argument("--once", action="store_true", help="Fetch one batch, then stop.")

    def handle(self, *args, timeout: int, once: bool, **options):
        if not settings.TELEGRAM_BOT_TOKEN:
            raise CommandError("Set TELEGRAM_BOT_TOKEN first.")
        try:
            received = asyncio.run(self._poll(wait=timeout, once=once))
        except KeyboardInterrupt:
            self.stdout.write("Stopped.")
            return
        self.stdout.write(f"Received {received} update(s).")

    async def _poll(self, *, wait: int, once: bool) -> int:
        received = 0
        async with make_bot() as bot:
            await bot.delete_webhook()
            self.stdout.write(f"Polling as @{bot.username}; Ctrl-C stops.")
            offset = None
            while True:
                updates = await bot.get_updates(
                    offset=offset, timeout=wait, allowed_updates=ALLOWED_UPDATES
                )
                for update in updates:
                    await in_thread(receive_update, payload=update.to_dict())
                    offset = update.update_id + 1
                    received += 1
                if once:
                    if offset is not None:  # confirm what we stored, so Telegram drops it
                        await bot.get_updates(offset=offset, timeout=0)
                    return received
