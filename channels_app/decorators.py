from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse


def require_setting(name: str) -> Callable:
    """An endpoint whose integration is not configured does not exist (404)."""

    def decorate(
        view: Callable[..., Awaitable[HttpResponse]],
    ) -> Callable[..., Awaitable[HttpResponse]]:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not getattr(settings, name, None):
                raise Http404(f"{name} is not configured")
            return await view(request, *args, **kwargs)

        return wrapper

    return decorate
