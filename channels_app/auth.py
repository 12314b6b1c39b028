"""Bearer authentication of the HTTP channels (an API key, or an Entra ID access token while
linking is on), and who the caller speaks for."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from afhost.db import in_thread
from afhost.models import ApiKey, hash_api_key
from afhost.types import ChannelIdentity, ResponseTarget
from channels_app.exceptions import ApiError
from linking.services import linking_enabled
from linking.tokens import InvalidToken, KeysUnavailable, verify_access_token_async

logger = logging.getLogger(__name__)

# Identity values a trusted caller may send: the Azure agent-server charset, plus "@".
_HEADER_VALUE = re.compile(r"[A-Za-z0-9._:@\-]{1,256}")
# A JWT's shape (header.payload.signature, base64url); API keys have no dots.
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

USER_HEADERS = ("x-agent-user-id", "x-agent-user-isolation-key")
CHAT_HEADER = "x-agent-chat-isolation-key"
CALL_ID_HEADER = "x-agent-foundry-call-id"


@dataclass(frozen=True, slots=True)
class ApiCaller:
    identity: ChannelIdentity
    # A chat partition named by a trusted caller (agent-server protocol 1.0), if any.
    chat_key: str | None
    call_id: str | None
    # The caller's API key; None for a caller with an Entra ID access token.
    api_key: ApiKey | None = None
    # The verified claims of the caller's access token; None for an API key caller.
    verified_claims: Mapping[str, Any] | None = None


# Run and Conversation hold isolation keys of up to 300 characters, "api:" included.
_MAX_NATIVE_ID = 300 - len("api:")


def _user_native_id(partition: str, user_id: str) -> str:
    """`<partition>:user.<id>`, so the same user id names different people in two partitions.

    An id too long to fit next to the partition is replaced by its digest; a readable id begins
    "user." and a digest "user-sha256.", so the two never collide.
    """
    native_id = f"{partition}:user.{user_id}"
    if len(native_id) <= _MAX_NATIVE_ID:
        return native_id
    return f"{partition}:user-sha256.{hashlib.sha256(user_id.encode()).hexdigest()}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    if not _HEADER_VALUE.fullmatch(value):
        raise ApiError(
            400,
            f"Invalid '{name}' header: use 1 to 256 letters, digits or . _ : @ -",
            param=name,
            code="invalid_header",
        )
    return value


# key hash -> (key, monotonic deadline): saves a query per request; a revoked key stops working
# within AFHOST_API_KEY_CACHE_SECONDS in every process.
_key_cache: dict[str, tuple[ApiKey, float]] = {}


def _cached_key(key_hash: str) -> ApiKey | None:
    cached = _key_cache.get(key_hash)
    return cached[0] if cached is not None and cached[1] > time.monotonic() else None


def _load_key(key_hash: str) -> ApiKey | None:
    api_key = ApiKey.objects.for_key_hash(key_hash)
    if api_key is None:
        _key_cache.pop(key_hash, None)
    else:
        _key_cache[key_hash] = (api_key, time.monotonic() + settings.AFHOST_API_KEY_CACHE_SECONDS)
    return api_key


# Where the API routes' gate leaves the caller it authenticated, in the request's ASGI scope.
SCOPE_CALLER = "afhost.api_caller"


async def request_caller(request: HttpRequest) -> ApiCaller:
    """The caller of an API request: the one the gate authenticated from the request's headers
    before its body was read (channels_app.views.ApiGate), or, for a request that did not come
    through the gate (Django's test client), the one its headers authenticate now."""
    caller = getattr(request, "scope", {}).get(SCOPE_CALLER)
    return caller if caller is not None else await authenticate(request.headers)


async def authenticate(headers: Mapping[str, str]) -> ApiCaller:
    """Who is calling, from the request headers (names in lower case, or a Django HttpHeaders).

    While linking is on, a bearer value shaped like a JWT is taken for an Entra ID access token.
    """
    scheme, _, credential = headers.get("authorization", "").partition(" ")
    raw_key = credential.strip()
    if scheme.lower() != "bearer" or not raw_key:
        raise ApiError(
            401,
            "You didn't provide an API key. "
            "Send it in the Authorization header as 'Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    if linking_enabled() and _JWT.fullmatch(raw_key):
        return await _token_caller(raw_key, headers)
    key_hash = hash_api_key(raw_key)
    api_key = _cached_key(key_hash) or await in_thread(_load_key, key_hash)
    if api_key is None:
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    user_id = next((v for v in (_header(headers, h) for h in USER_HEADERS) if v is not None), None)
    chat_key = _header(headers, CHAT_HEADER)
    if (user_id or chat_key) and not api_key.is_trusted:
        raise ApiError(
            403,
            "This API key may not name end users: identity headers need a trusted key.",
            type="permission_error",
            code="untrusted_api_key",
        )
    # A caller naming no user speaks for the key itself: `api:key.<public_id>`, whatever its
    # partition. A named user belongs to the key's partition: `api:<partition>:user.<id>`.
    if user_id:
        native_id = _user_native_id(api_key.effective_partition, user_id)
    else:
        native_id = f"key.{api_key.public_id}"
    return ApiCaller(
        api_key=api_key,
        identity=ChannelIdentity(channel="api", native_id=native_id),
        chat_key=chat_key,
        call_id=_header(headers, CALL_ID_HEADER),
    )


async def _token_caller(token: str, headers: Mapping[str, str]) -> ApiCaller:
    """The Entra ID principal an access token was issued to, speaking for itself alone."""
    try:
        claims = await verify_access_token_async(token)
    except InvalidToken as exc:
        logger.info("access token refused: %s", exc.reason)
        message = (
            "The access token has expired."
            if exc.expired
            else "The access token is not valid for this API."
        )
        raise ApiError(401, message, code="invalid_token") from None
    except KeysUnavailable as exc:
        logger.warning("Entra ID signing keys unavailable: %s", exc)
        raise ApiError(
            503,
            "The access token cannot be checked right now. Please retry shortly.",
            type="server_error",
            code="service_unavailable",
        ) from None
    if any(headers.get(name) is not None for name in (*USER_HEADERS, CHAT_HEADER)):
        raise ApiError(
            403,
            "An access token may not name end users: identity headers need a trusted API key.",
            type="permission_error",
            code="untrusted_caller",
        )
    return ApiCaller(
        identity=ChannelIdentity(channel="api", native_id=f"entra.{claims['oid']}"),
        chat_key=None,
        call_id=_header(headers, CALL_ID_HEADER),
        verified_claims=claims,
    )


def check_response_target(caller: ApiCaller, target: ResponseTarget) -> None:
    """Only a trusted key may push to chats it names; others reach their own linked identities."""
    if target.explicit and not (caller.api_key and caller.api_key.is_trusted):
        raise ApiError(
            403,
            "Only a trusted API key may name chats in 'response_target'; other callers reach "
            "the identities linked to them ('active', 'all_linked', or a channel name).",
            type="permission_error",
            param="response_target",
            code="untrusted_response_target",
        )
