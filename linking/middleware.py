"""Middleware of the linking app."""

from __future__ import annotations

from django.http import HttpRequest
from social_core.exceptions import SocialAuthBaseException
from social_django.middleware import SocialAuthExceptionMiddleware

from linking.views import FAILURE_KEY

RESTART = "Open the link from the chat again to start over."
_BY_CLAIM = {
    "tid": "You signed in with an account of another organisation. "
    "Sign in with your organisation account.",
    "aud": "Microsoft's answer was meant for another application, so it was not accepted.",
    "iss": "Microsoft's answer came from an unexpected issuer, so it was not accepted.",
}
_BY_CODE = {
    "invalid_signature": "The signature on Microsoft's answer could not be verified, "
    "so it was not accepted.",
    "response_expired": f"Microsoft's answer had expired. {RESTART}",
    "session_context_missing": "This sign-in was not started in this browser, or it was "
    f"already completed. {RESTART}",
    "state_mismatch": f"This sign-in does not match the one this browser started. {RESTART}",
    "authorization_declined": f"Signing in was cancelled. {RESTART}",
    "authorization_code_rejected": f"Microsoft did not accept the sign-in. {RESTART}",
}


def failure_reason(exception: SocialAuthBaseException) -> str:
    """What went wrong, in plain words; social-core's own message is generic and safe too."""
    return _BY_CLAIM.get(exception.claim or "") or _BY_CODE.get(exception.code) or str(exception)


class LinkFailureMiddleware(SocialAuthExceptionMiddleware):
    """social-auth's failures (another tenant, a replayed or foreign callback, a token that does
    not verify) end on the link failure page (SOCIAL_AUTH_LOGIN_ERROR_URL) with their reason,
    whether DEBUG is on or off."""

    def raise_exception(self, request: HttpRequest, exception: Exception) -> bool:
        return False

    # Called only for social-auth's own exceptions (process_exception checks).
    def get_message(  # type: ignore[override]
        self, request: HttpRequest, exception: SocialAuthBaseException
    ) -> str:
        return failure_reason(exception)

    def dispatch_error(
        self,
        request: HttpRequest,
        transports: object,
        url: str | None,
        message: str,
        backend_name: str,
        *,
        metadata: dict[str, str] | None = None,
    ) -> str | None:
        request.session[FAILURE_KEY] = message
        return url
