"""social-auth pipeline steps (SOCIAL_AUTH_PIPELINE)."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from django.shortcuts import redirect
from social_core.backends.base import BaseAuth

from linking import services
from linking.views import CHALLENGE_KEY, GRANT_KEY, NO_CHALLENGE, render_failure


def redeem_challenge(
    backend: BaseAuth, response: dict[str, Any], *args: Any, **kwargs: Any
) -> HttpResponse:
    """Link the identity of the challenge this browser claimed to the principal who signed in.

    The last step: it answers a response, which social-auth hands back as is, so no Django user
    is created, associated, logged in or changed. `response` is the token response merged with
    the id token's claims, verified by then (signature, issuer, audience, expiry, tenant).
    """
    request = backend.strategy.request  # type: ignore[attr-defined]  # social_django's strategy
    pk = request.session.get(CHALLENGE_KEY)
    if pk is None:
        return render_failure(request, NO_CHALLENGE, status=400)
    try:
        grant = services.redeem_challenge(
            pk=pk,
            session_key=request.session.session_key,
            principal=services.Principal.from_claims(response),
        )
    except services.LinkRefused as refused:
        request.session.pop(CHALLENGE_KEY)
        return render_failure(request, str(refused), status=403)
    request.session.pop(CHALLENGE_KEY)
    request.session[GRANT_KEY] = grant.pk
    return redirect("linking:done")
