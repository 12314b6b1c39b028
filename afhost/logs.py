"""Logging helpers: no configured secret reaches a log line, whoever logs it (settings.LOGGING)."""

from __future__ import annotations

import functools
import logging
import re
from urllib.parse import quote

from django.conf import settings

REDACTED = "[REDACTED]"
# Settings whose values are secrets, besides the database passwords.
SECRET_SETTINGS = (
    "SECRET_KEY",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_WEBHOOK_SECRET",
    "ENTRA_CLIENT_SECRET",
    "OPENAI_API_KEY",
    "AZURE_OPENAI_API_KEY",
)
# Shorter values would match ordinary words; no real secret is this short.
MIN_SECRET_LENGTH = 8


def configured_secrets() -> tuple[str, ...]:
    """The configured secrets as they may appear in text, longest first."""
    values = [str(getattr(settings, name, "") or "") for name in SECRET_SETTINGS]
    values += [str(db.get("PASSWORD") or "") for db in settings.DATABASES.values()]
    return _written_forms(tuple(values))


@functools.lru_cache(maxsize=8)
def _written_forms(values: tuple[str, ...]) -> tuple[str, ...]:
    # A bot token is "<bot id>:<secret>"; download URLs carry it percent-encoded ("123%3Aabc"),
    # and the part after the colon is the secret on its own.
    parts = [value.partition(":")[2] for value in values if ":" in value]
    found = {form for value in (*values, *parts) for form in (value, quote(value, safe=""))}
    return tuple(sorted((s for s in found if len(s) >= MIN_SECRET_LENGTH), key=len, reverse=True))


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactSecrets(logging.Filter):
    """Replace configured secrets in a record's message, traceback and stack with [REDACTED].

    On a handler, it covers every logger that reaches the handler: httpx logs each Bot API URL
    (which holds the bot token), python-telegram-bot logs request parameters at DEBUG, and
    exception messages may quote either.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = configured_secrets()
        try:
            message = record.getMessage()
        except Exception:  # the handler reports a record it cannot format
            return True
        if (clean := redact(message, secrets)) != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, secrets)
        return True


class QueueTaskChatter(logging.Filter):
    """Drop django-q2's INFO lines about single tasks: queued (in the web process), processing
    and processed (in the worker), three lines for every message or run, which the rows and the
    admin tell better. Its cluster's start, stop and recycling stay, as does a failed task (an
    ERROR)."""

    PER_TASK = re.compile(r"Enqueued \[|Processed '|\S+ processing ")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not self.PER_TASK.match(record.getMessage())
