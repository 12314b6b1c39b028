"""What this server hosts: the agent, its model id and the channels that are on, as the home
page, `make run`'s ready banner and the API's model list tell it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.urls import reverse

from afhost.targets import MODEL_PRESETS, get_target
from linking.services import linking_enabled

# OpenAI's models carry the time they were made; the hosted agent's is when this process
# loaded it.
STARTED_AT = int(time.time())


def hosted_model_id() -> str:
    """The id the API lists for the hosted agent: the model's (or Azure deployment's) name for a
    built-in model target, else the agent's own name, else AFHOST_TARGET."""
    if settings.AFHOST_TARGET in MODEL_PRESETS:
        return settings.AFHOST_MODEL
    return getattr(get_target(), "name", None) or settings.AFHOST_TARGET


def telegram_mode() -> str:
    """How Telegram reaches the bot: "webhook", "polling" (manage.py telegram_poll), or "off"."""
    return settings.TELEGRAM_MODE if settings.TELEGRAM_BOT_TOKEN else "off"


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    state: str  # "on", "webhook", "polling" or "off"
    url: str  # where it is reached, "" when off or not reached by URL
    note: str


def channels(base_url: str) -> list[Channel]:
    """The channels and where they are reached; `base_url` is the server's, without a slash."""
    responses = reverse("responses_v1:response_create")
    telegram = telegram_mode()
    webhook = reverse("channels_app:telegram_webhook")
    telegram_notes = {
        "webhook": "Telegram posts updates here (register it: manage.py set_telegram_webhook "
        f"{settings.AFHOST_PUBLIC_URL}).",
        "polling": "manage.py telegram_poll fetches updates from Telegram.",
        "off": "Set TELEGRAM_BOT_TOKEN to turn the bot on.",
    }
    return [
        Channel(
            "Responses API",
            "on",
            f"{base_url}{responses}",
            f"OpenAI's Responses API (also at {reverse('responses:response_create')} for Azure "
            f"AI Foundry); models at {reverse('responses_v1:model_list')}. Bearer API keys.",
        ),
        Channel(
            "Invocations",
            "on",
            f"{base_url}{reverse('invocations:create')}",
            "Azure AI hosted agents' Invocations protocol: blocking, streamed or long-running "
            f"(polled at /invocations/{{id}}); a WebSocket at {base_url.replace('http', 'ws', 1)}"
            "/invocations_ws. Bearer API keys.",
        ),
        Channel(
            "Telegram",
            telegram,
            f"{settings.AFHOST_PUBLIC_URL}{webhook}" if telegram == "webhook" else "",
            telegram_notes[telegram],
        ),
        Channel(
            "Entra ID linking",
            "on" if linking_enabled() else "off",
            "",
            "Chat users link their organisation account; API callers may send Entra ID tokens."
            if linking_enabled()
            else "Set ENTRA_TENANT_ID, ENTRA_CLIENT_ID and ENTRA_CLIENT_SECRET to turn it on.",
        ),
    ]
