"""The web half of the link ceremony.

A person opens the one-time link the bot sent (`open`), reads who asked and what will be stored
(`page`), and signs in with Microsoft (`start`); social-auth's callback runs
`linking.pipeline.redeem_challenge`, which ends on `done` or on a failure page. The challenge is
found from the browser session alone, and the identity from the challenge, never from a request.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST
from social_core.actions import do_auth
from social_django.utils import psa

from linking import services
from linking.models import LinkChallenge, LinkGrant

BACKEND = "azuread-v2-tenant-oauth2"
# Session keys: the challenge this browser claimed, the grant it made, why signing in failed.
CHALLENGE_KEY = "link_challenge"
GRANT_KEY = "link_grant"
FAILURE_KEY = "link_failure"

NOT_CONFIGURED = "Account linking is not configured on this server."
NO_CHALLENGE = (
    "No link is in progress in this browser. Open the link the bot sent you, "
    "or ask it for a new one with /link."
)


def render_failure(
    request: HttpRequest, reason: str, *, status: int, title: str = "Linking failed"
) -> HttpResponse:
    """The failure page; `reason` is shown as text (escaped), so it must be safe to show."""
    context = {"title": title, "reason": reason, "retry": CHALLENGE_KEY in request.session}
    return render(request, "linking/failed.html", context, status=status)


def require_linking(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """404 with a plain explanation while linking is not configured."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not services.linking_enabled():
            return render_failure(
                request, NOT_CONFIGURED, status=404, title="Account linking is off"
            )
        return view(request, *args, **kwargs)

    return wrapper


def _claimed_challenge(request: HttpRequest) -> LinkChallenge:
    pk = request.session.get(CHALLENGE_KEY)
    if pk is None:
        raise services.LinkRefused(NO_CHALLENGE)
    return services.open_challenge(pk=pk, session_key=request.session.session_key or "")


@never_cache
@require_GET
@require_linking
def open_link(request: HttpRequest, token: str) -> HttpResponse:
    """Claim the link for this browser, then show it at /link/ (the token leaves the address
    bar, the history and any Referer)."""
    if request.session.session_key is None:
        request.session.save()
    try:
        challenge = services.claim_challenge(
            token=token, session_key=request.session.session_key or ""
        )
    except services.LinkRefused as refused:
        return render_failure(request, str(refused), status=410)
    request.session[CHALLENGE_KEY] = challenge.pk
    return redirect("linking:page")


@never_cache
@require_GET
@require_linking
def page(request: HttpRequest) -> HttpResponse:
    """Who asked, what signing in stores, and the button that starts it."""
    try:
        challenge = _claimed_challenge(request)
    except services.LinkRefused as refused:
        return render_failure(request, str(refused), status=410)
    current = LinkGrant.objects.active().filter(identity=challenge.identity).first()
    context = {"challenge": challenge, "identity": challenge.identity, "current": current}
    return render(request, "linking/page.html", context)


@never_cache
@require_POST
@require_linking
def start(request: HttpRequest) -> HttpResponse:
    """Redirect to Microsoft's sign-in, noting whether the person asked to replace a link."""
    try:
        challenge = _claimed_challenge(request)
    except services.LinkRefused as refused:
        return render_failure(request, str(refused), status=410)
    services.set_relink(challenge=challenge, relink="relink" in request.POST)
    return _begin(request, BACKEND)


@psa("social:complete")
def _begin(request: HttpRequest, backend: str) -> HttpResponse:
    # As social_django.views.auth, but with no user to associate the account with.
    return do_auth(request.backend)  # type: ignore[attr-defined]  # set by @psa


@never_cache
@require_GET
@require_linking
def done(request: HttpRequest) -> HttpResponse:
    grant = (
        LinkGrant.objects.active()
        .filter(pk=request.session.get(GRANT_KEY, 0))
        .select_related("identity")
        .first()
    )
    if grant is None:
        return render_failure(
            request, "No account was linked in this browser.", status=404, title="Nothing here"
        )
    return render(request, "linking/done.html", {"grant": grant})


@never_cache
@require_GET
@require_linking
def failed(request: HttpRequest) -> HttpResponse:
    """Where social-auth's failures end (linking.middleware), with their reason."""
    reason = request.session.pop(FAILURE_KEY, "") or "Signing in could not be completed."
    return render_failure(request, reason, status=400)
