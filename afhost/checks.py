"""Settings the host cannot run without: enforced when the ASGI application starts, and reported
by `manage.py check` (the secret key by `check --deploy`, so that commands which need no secret,
like makemigrations, still run without one).

A built-in model target's service is probed once at start (afhost.W010-W013): a wrong key or an
unreachable endpoint is a warning for the operator, never a reason not to start.
"""

from __future__ import annotations

import logging
import sqlite3

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

from afhost.targets import MODEL_PRESETS, TargetLoadError, get_target

logger = logging.getLogger(__name__)

MISSING_SECRET_KEY = "SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is off."  # noqa: S105
# Storing runs and Telegram chats reads the new rows' ids back from INSERT ... RETURNING (with ON
# CONFLICT too), which SQLite has from 3.35; Django itself accepts 3.31.
SQLITE_MINIMUM = (3, 35)


def require_runtime_settings() -> None:
    """Raise ImproperlyConfigured unless a server or worker can run: a secret key and a target.

    A model target's service that does not answer as it should is logged as a warning.
    """
    try:
        settings.SECRET_KEY  # noqa: B018 (Django raises on an empty key when it is read)
    except ImproperlyConfigured:
        raise ImproperlyConfigured(MISSING_SECRET_KEY) from None
    get_target()
    for warning in check_model_service(None):
        logger.warning("%s %s (%s)", warning.msg, warning.hint, warning.id)


@register(deploy=True)
def check_secret_key(app_configs, **kwargs) -> list[Error]:
    try:
        settings.SECRET_KEY  # noqa: B018
    except ImproperlyConfigured:
        return [Error(MISSING_SECRET_KEY, hint="See .env.example.", id="afhost.E002")]
    return []


@register()
def check_sqlite_version(app_configs, **kwargs) -> list[Error]:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
        return []
    if sqlite3.sqlite_version_info >= SQLITE_MINIMUM:
        return []
    return [
        Error(
            f"SQLite {sqlite3.sqlite_version} is too old: afhost needs 3.35 or newer.",
            hint="Use a Python built with a newer SQLite, or PostgreSQL (DATABASE_URL).",
            id="afhost.E003",
        )
    ]


@register()
def check_target(app_configs, **kwargs) -> list[Error]:
    try:
        get_target()
    except TargetLoadError as exc:
        return [
            Error(
                str(exc),
                hint="Set AFHOST_TARGET to 'package.module:attribute', or to a model: "
                f"{', '.join(MODEL_PRESETS)} (see .env.example).",
                id="afhost.E001",
            )
        ]
    return []


@register()
def check_model_service(app_configs, **kwargs) -> list[Warning]:
    """The model service of a built-in model target, asked for its models once per process."""
    if settings.AFHOST_TARGET not in MODEL_PRESETS:
        return []
    try:
        target = get_target()
    except TargetLoadError:
        return []  # check_target reports it
    problem = target.probe()  # type: ignore[attr-defined]  # a built-in model target
    return [] if problem is None else [Warning(problem.message, hint=problem.hint, id=problem.id)]
