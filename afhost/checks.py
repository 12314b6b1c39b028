"""Settings the host cannot run without: enforced when the ASGI application starts, and reported
by `manage.py check` (the secret key by `check --deploy`, so that commands which need no secret,
like makemigrations, still run without one)."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register
from django.core.exceptions import ImproperlyConfigured

from afhost.targets import TargetLoadError, get_target

MISSING_SECRET_KEY = "SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is off."  # noqa: S105


def require_runtime_settings() -> None:
    """Raise ImproperlyConfigured unless a server or worker can run: a secret key and a target."""
    try:
        settings.SECRET_KEY  # noqa: B018 (Django raises on an empty key when it is read)
    except ImproperlyConfigured:
        raise ImproperlyConfigured(MISSING_SECRET_KEY) from None
    get_target()


@register(deploy=True)
def check_secret_key(app_configs, **kwargs) -> list[Error]:
    try:
        settings.SECRET_KEY  # noqa: B018
    except ImproperlyConfigured:
        return [Error(MISSING_SECRET_KEY, hint="See .env.example.", id="afhost.E002")]
    return []


@register()
def check_target(app_configs, **kwargs) -> list[Error]:
    try:
        get_target()
    except TargetLoadError as exc:
        return [
            Error(
                str(exc), hint="Set AFHOST_TARGET to 'package.module:attribute'.", id="afhost.E001"
            )
        ]
    return []
