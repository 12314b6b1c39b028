"""Microsoft Entra ID access tokens for this app's API, verified against the tenant's keys.

A token is an RS256 JWT that Entra ID issued for this app (`aud` is ENTRA_CLIENT_ID or
`api://ENTRA_CLIENT_ID`) to a principal (`oid`) of our tenant (`tid`, and the tenant's issuer).
Entra signs the tokens of every tenant with the same keys, so the tenant checks matter as much
as the signature.

The tenant's signing keys (its JWKS) are fetched over HTTP, a blocking call: they are kept for
KEYS_LIFESPAN, and a token signed with a key not among them (a key Entra rotated in) fetches
them again at most once per REFETCH_EVERY. `verify_access_token_async` verifies on the event
loop while the keys are kept, and in a thread when they must be fetched.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import jwt
from django.conf import settings

# Entra's own default authority: only its tokens may carry Entra's v1 issuer.
ENTRA_DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
# Seconds of clock difference between Entra ID and this server tolerated on exp, nbf and iat.
LEEWAY = 60
# Seconds the tenant's keys are kept; Entra announces a new key well before signing with it.
KEYS_LIFESPAN = 3600
# Seconds between fetches of the keys for tokens signed with an unknown key (kid).
REFETCH_EVERY = 60
KEYS_TIMEOUT = 10


class InvalidToken(Exception):
    """Not a valid access token for this API; `reason` is short, for logs."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.expired = reason, expired


class KeysUnavailable(Exception):
    """The tenant's signing keys could not be fetched, so no token can be checked."""


def jwks_url() -> str:
    return f"{settings.ENTRA_AUTHORITY}/{settings.ENTRA_TENANT_ID}/discovery/v2.0/keys"


def issuers() -> tuple[str, ...]:
    tenant = settings.ENTRA_TENANT_ID
    v2 = f"{settings.ENTRA_AUTHORITY}/{tenant}/v2.0"
    if settings.ENTRA_AUTHORITY == ENTRA_DEFAULT_AUTHORITY:
        return v2, f"https://sts.windows.net/{tenant}/"
    return (v2,)


def audiences() -> tuple[str, ...]:
    return settings.ENTRA_CLIENT_ID, f"api://{settings.ENTRA_CLIENT_ID}"


@functools.cache
def _keys(url: str) -> jwt.PyJWKClient:
    """The (process-wide) keeper of the keys published at `url`."""
    return jwt.PyJWKClient(
        url, lifespan=KEYS_LIFESPAN, cooldown_duration=REFETCH_EVERY, timeout=KEYS_TIMEOUT
    )


def _kid(token: str) -> str:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise InvalidToken("malformed") from None
    if header.get("alg") != "RS256":
        raise InvalidToken(f"algorithm {header.get('alg')!r}, not RS256")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("no kid")
    return kid


def _kept_key(kid: str) -> jwt.PyJWK | None:
    """The key named `kid` among the keys kept, without fetching them."""
    keys = _keys(jwks_url()).jwk_set_cache
    kept = None if keys is None else keys.get()
    if kept is None:
        return None
    try:
        key = kept[kid]
    except KeyError:
        return None
    return key if key.public_key_use in ("sig", None) else None


def _fetched_key(kid: str) -> jwt.PyJWK:
    """The key named `kid`, fetching the keys if they are not kept or do not include it."""
    try:
        return _keys(jwks_url()).get_signing_key(kid)
    except jwt.PyJWKClientConnectionError as exc:
        raise KeysUnavailable(str(exc)) from exc
    except jwt.PyJWKClientError:
        raise InvalidToken(f"unknown kid {kid!r}") from None


def _verified(token: str, key: jwt.PyJWK) -> dict[str, Any]:
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=audiences(),
            leeway=LEEWAY,
            options={"require": ["exp", "iat", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("expired", expired=True) from None
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(str(exc) or type(exc).__name__) from None
    # Case-insensitively: Entra writes the tenant id in lower case, an operator may not.
    if str(claims["iss"]).lower() not in {issuer.lower() for issuer in issuers()}:
        raise InvalidToken(f"issuer {claims['iss']!r}")
    if str(claims.get("tid", "")).lower() != settings.ENTRA_TENANT_ID.lower():
        raise InvalidToken(f"tenant {claims.get('tid')!r}")
    if not isinstance(claims.get("oid"), str) or not claims["oid"]:
        raise InvalidToken("no oid")
    # An access token carries the scopes (delegated) or roles (app-only) it grants; an id token
    # for this app, which has the same audience, carries neither.
    if not claims.get("scp") and not claims.get("roles"):
        raise InvalidToken("neither scp nor roles: not an access token")
    return claims


def verify_access_token(token: str) -> dict[str, Any]:
    """The claims of a valid access token for this API; InvalidToken otherwise (KeysUnavailable
    when the keys cannot be fetched). Blocking: it may fetch the tenant's keys."""
    kid = _kid(token)
    return _verified(token, _kept_key(kid) or _fetched_key(kid))


async def verify_access_token_async(token: str) -> dict[str, Any]:
    """`verify_access_token` from async code: on the event loop while the token's key is kept
    (checking a signature takes microseconds), in a thread when the keys must be fetched."""
    key = _kept_key(_kid(token))
    if key is None:
        return await asyncio.to_thread(verify_access_token, token)
    return _verified(token, key)
