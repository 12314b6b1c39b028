"""System checks: a target that cannot be loaded stops `manage.py` commands with a clear error."""

from __future__ import annotations

from django.core.checks import Error, register

from afhost.targets import TargetLoadError, get_target


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
