"""A fake Microsoft Entra ID (an OpenID provider) on loopback, speaking real HTTP.

Stdlib ``http.server`` in a daemon thread, RS256 tokens signed with PyJWT, with Entra's URL
layout under ``{url}/{tenant}``, so afhost is pointed at it with ``ENTRA_AUTHORITY = fake.url``:

* ``GET  /{tenant}/v2.0/.well-known/openid-configuration``: discovery (issuer
  ``{url}/{tenant}/v2.0``, as Entra's v2 issuer);
* ``GET  /{tenant}/discovery/v2.0/keys``: the JWKS;
* ``GET  /{tenant}/oauth2/v2.0/authorize``: a sign-in form (a browser fills in a name);
  ``POST`` of that form with ``login=<name>``: 302 to ``redirect_uri?code=...&state=...``;
* ``POST /{tenant}/oauth2/v2.0/token``: the authorization-code grant (client secret in the
  body, PKCE verifier checked), answering an ``id_token`` (and an ``access_token``).

People are known by their login name: ``alice`` gets a stable ``oid``, ``tid`` = the tenant,
``preferred_username`` ``alice@contoso.example``, and what ``fake.people["alice"]`` adds
(``groups``, ``roles``...). ``fake.overrides`` is merged into every id token (forge a wrong
``tid``, ``aud`` or ``exp``) and ``fake.id_token_key`` signs them with another key (a bad
signature); ``fake.mint(**claims)`` signs an access token for the API.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "22222222-3333-4444-5555-666666666666"
CLIENT_SECRET = "test-client-secret"
KEY_ID = "fake-key-1"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FakeEntra:
    def __init__(self, *, tenant: str = TENANT, client_id: str = CLIENT_ID, port: int = 0) -> None:
        self.tenant, self.client_id = tenant, client_id
        self.key = new_key()
        self.people: dict[str, dict[str, Any]] = {}
        self.overrides: dict[str, Any] = {}
        # Signs id tokens instead of the published key (forge a bad signature).
        self.id_token_key: rsa.RSAPrivateKey | None = None
        self._oids: dict[str, str] = {}
        self._codes: dict[str, dict[str, Any]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeEntra:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def issuer(self) -> str:
        return f"{self.url}/{self.tenant}/v2.0"

    def oid(self, login: str) -> str:
        return self._oids.setdefault(login, str(uuid.uuid4()))

    def claims_of(self, login: str) -> dict[str, Any]:
        return {
            "tid": self.tenant,
            "oid": self.oid(login),
            "sub": hashlib.sha256(login.encode()).hexdigest()[:32],
            "name": f"{login.title()} Tester",
            "preferred_username": f"{login}@contoso.example",
            "email": f"{login}@contoso.example",
            **self.people.get(login, {}),
        }

    def sign(self, claims: dict[str, Any], *, key: rsa.RSAPrivateKey | None = None) -> str:
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": KEY_ID})

    def mint(
        self, login: str = "alice", *, key: rsa.RSAPrivateKey | None = None, **claims: Any
    ) -> str:
        """An access token for this app's API, as Entra issues it (v2), for `login`."""
        now = int(time.time())
        base = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "ver": "2.0",
            "scp": "access_as_user",
            **self.claims_of(login),
        }
        return self.sign({**base, **claims}, key=key)

    def _id_token(self, login: str, nonce: str | None) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            **({"nonce": nonce} if nonce else {}),
            **self.claims_of(login),
            **self.overrides,
        }
        return self.sign(claims, key=self.id_token_key)

    def _jwks(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": KEY_ID, "use": "sig", "alg": "RS256"}]}


def _handler(op: FakeEntra) -> type[BaseHTTPRequestHandler]:
    prefix = f"/{op.tenant}"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(
            self, status: int, body: str | dict, *, headers: dict[str, str] | None = None
        ) -> None:
            data = (json.dumps(body) if isinstance(body, dict) else body).encode()
            self.send_response(status)
            kind = "application/json" if isinstance(body, dict) else "text/html; charset=utf-8"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _form(self) -> dict[str, str]:
            length = int(self.headers.get("Content-Length") or 0)
            fields = parse_qs(self.rfile.read(length).decode())
            return {name: values[0] for name, values in fields.items()}

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            path, query = url.path, {k: v[0] for k, v in parse_qs(url.query).items()}
            if path == f"{prefix}/v2.0/.well-known/openid-configuration":
                base = f"{op.url}{prefix}"
                return self._send(
                    200,
                    {
                        "issuer": op.issuer,
                        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                        "token_endpoint": f"{base}/oauth2/v2.0/token",
                        "jwks_uri": f"{base}/discovery/v2.0/keys",
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["pairwise"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                    },
                )
            if path == f"{prefix}/discovery/v2.0/keys":
                return self._send(200, op._jwks())
            if path == f"{prefix}/oauth2/v2.0/authorize":
                hidden = "".join(
                    f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                    for k, v in query.items()
                )
                return self._send(
                    200,
                    "<!doctype html><title>Sign in - Fake Entra ID</title><h1>Sign in</h1>"
                    f'<form method="post">{hidden}<label>Account <input name="login"></label>'
                    '<button type="submit">Sign in</button></form>',
                )
            return self._send(404, {"error": "not_found"})

        def do_POST(self) -> None:
            path, form = urlsplit(self.path).path, self._form()
            if path == f"{prefix}/oauth2/v2.0/authorize":
                if form.get("client_id") != op.client_id:
                    return self._send(400, "unknown client")
                code = secrets.token_urlsafe(16)
                op._codes[code] = {**form, "login": form.get("login") or "alice"}
                query = urlencode({"code": code, "state": form.get("state", "")})
                return self._send(302, "", headers={"Location": f"{form['redirect_uri']}?{query}"})
            if path == f"{prefix}/oauth2/v2.0/token":
                grant = op._codes.pop(form.get("code", ""), None)
                if (
                    grant is None
                    or form.get("client_id") != op.client_id
                    or form.get("client_secret") != CLIENT_SECRET
                    or form.get("redirect_uri") != grant.get("redirect_uri")
                    or not _pkce_ok(grant, form.get("code_verifier"))
                ):
                    return self._send(400, {"error": "invalid_grant"})
                return self._send(
                    200,
                    {
                        "token_type": "Bearer",
                        "expires_in": 3600,
                        "access_token": op.mint(grant["login"]),
                        "id_token": op._id_token(grant["login"], grant.get("nonce")),
                    },
                )
            return self._send(404, {"error": "not_found"})

    return Handler


def _pkce_ok(grant: dict[str, Any], verifier: str | None) -> bool:
    challenge = grant.get("code_challenge")
    if challenge is None:
        return True
    if verifier is None:
        return False
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == challenge


def main() -> None:
    """`python -m tests.fakes.oidc [PORT]`: serve a fake Entra ID for a local demo of linking."""
    import sys

    fake = FakeEntra(port=int(sys.argv[1]) if len(sys.argv) > 1 else 9000)
    sys.stdout.write(
        "Fake Entra ID (any account name signs in). For afhost:\n\n"
        f"export ENTRA_TENANT_ID={fake.tenant} ENTRA_CLIENT_ID={fake.client_id} "
        f"ENTRA_CLIENT_SECRET={CLIENT_SECRET} ENTRA_AUTHORITY={fake.url}\n\n"
        f"An access token for alice, valid for an hour:\n\n{fake.mint('alice')}\n"
    )
    sys.stdout.flush()
    try:
        fake._server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
