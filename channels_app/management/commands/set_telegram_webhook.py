import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse
from telegram import BotCommand
from telegram.error import TelegramError

from channels_app.telegram.processing import make_bot
from channels_app.telegram.services import ALLOWED_UPDATES

COMMANDS = [
    BotCommand("new", "Start a fresh conversation"),
    BotCommand("whoami", "What the bot knows about you"),
    BotCommand("link", "Link your organisation account"),
    BotCommand("unlink", "Remove the account link"),
    BotCommand("ask", "Ask a question (in groups)"),
    BotCommand("help", "What the bot can do"),
]


class Command(BaseCommand):
    help = "Register this server's webhook (under BASE_URL) with Telegram, with the secret token."

    def add_arguments(self, parser):
        parser.add_argument(
            "base_url", help="Public https base URL of this server, e.g. https://agent.example.com"
        )

    def handle(self, *args, base_url: str, **options):
        if not settings.TELEGRAM_BOT_TOKEN or not settings.TELEGRAM_WEBHOOK_SECRET:
            raise CommandError("Set TELEGRAM_BOT_TOKEN and TELEGRAM_WEBHOOK_SECRET first.")
        url = base_url.rstrip("/") + reverse("channels_app:telegram_webhook")
        try:
            asyncio.run(self._register(url))
        except TelegramError as exc:
            raise CommandError(f"Telegram refused: {exc}") from exc
        self.stdout.write(f"Webhook set to {url} for updates: {', '.join(ALLOWED_UPDATES)}")

    async def _register(self, url: str) -> None:
        async with make_bot() as bot:
            await bot.set_webhook(
                url, secret_token=settings.TELEGRAM_WEBHOOK_SECRET, allowed_updates=ALLOWED_UPDATES
            )
            await bot.set_my_commands(COMMANDS)
