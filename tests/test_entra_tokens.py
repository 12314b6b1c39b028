"""Entra ID access tokens instead of API keys on the Responses API, while linking is on.

In process, requests go to the real views through Django's async test client; one live test
drives a server (with the gate in front) with the official openai SDK. Tokens are signed by the
fake Entra ID on loopback, whose keys afhost fetches as it would Entra's.
"""

import asyncio
import time
from types import SimpleNamespace
from unittest import mock

import jwt
import jwt.jwks_client
import openai
import pytest
from django.test import AsyncClient

from afhost.models import Run
from channels_app import auth, turns
from channels_app.exceptions import ApiError
from linking import tokens
from linking.models import Allowlist, AllowlistEntry, ChannelPolicy, Identity, LinkGrant
from linking.services import person_of
from tests.conftest import entra_env, sdk_client
from tests.fakes.oidc import new_key


@pytest.fixture(autouse=True)
def _fresh_caches():
    """No signing keys, API keys or admissions kept from another test."""
    tokens._keys.cache_clear()
    auth._key_cache.clear()
    turns._admitted.clear()
    yield
    tokens._keys.cache_clear()
    turns._admitted.clear()


def _create(bearer, **headers):
    async def post():
        return await AsyncClient().post(
            "/v1/responses",
            {"model": "demo", "input": "hello"},
            content_type="application/json",
            headers={"Authorization": f"Bearer {bearer}", **headers},
        )

    return asyncio.run(post())


def _identity_of(entra, login):
    return Identity.objects.get(channel="api", native_id=f"entra.{entra.oid(login)}")


# --- verifying tokens --------------------------------------------------------------------------


def test_a_valid_token_gives_its_claims(entra):
    # given
    entra.people["alice"] = {"groups": ["g-staff"]}

    # when
    claims = tokens.verify_access_token(entra.mint("alice"))

    # then
    assert claims["oid"] == entra.oid("alice")
    assert claims["tid"] == entra.tenant
    assert claims["groups"] == ["g-staff"]


def test_the_app_id_uri_is_an_audience_too(entra):
    # when
    claims = tokens.verify_access_token(entra.mint(aud=f"api://{entra.client_id}"))

    # then
    assert claims["aud"] == f"api://{entra.client_id}"


def _expired(entra):
    now = int(time.time())
    return entra.mint(iat=now - 7200, nbf=now - 7200, exp=now - 3600)


def _unknown_kid(entra):
    return jwt.encode(
        {
            "iss": entra.issuer,
            "aud": entra.client_id,
            "iat": int(time.time()),
            "exp": int(time.time()) + 3600,
            **entra.claims_of("alice"),
        },
        entra.key,
        algorithm="RS256",
        headers={"kid": "not-a-kid-of-the-tenant"},
    )


def _hs256(entra):
    claims = jwt.decode(entra.mint(), options={"verify_signature": False})
    return jwt.encode(claims, "a shared secret of 32 bytes or so", algorithm="HS256")


OTHER_TENANT = "99999999-8888-7777-6666-555555555555"
# name: (forge a token, the reason it is refused for)
FORGED = {
    "wrong audience": (lambda entra: entra.mint(aud="api://another-app"), "Audience doesn't match"),
    "wrong tid": (lambda entra: entra.mint(tid=OTHER_TENANT), f"tenant '{OTHER_TENANT}'"),
    "wrong issuer": (
        lambda entra: entra.mint(iss=f"{entra.url}/{OTHER_TENANT}/v2.0"),
        "issuer 'http://127.0.0.1:",
    ),
    "bad signature": (lambda entra: entra.mint(key=new_key()), "Signature verification failed"),
    "unknown kid": (_unknown_kid, "unknown kid 'not-a-kid-of-the-tenant'"),
    "no oid": (lambda entra: entra.mint(oid=""), "no oid"),
    "no exp": (lambda entra: entra.mint(exp=None), 'Token is missing the "exp" claim'),
    "HS256": (_hs256, "algorithm 'HS256', not RS256"),
    "an id token": (lambda entra: entra.mint(scp=None), "neither scp nor roles"),
}


@pytest.mark.parametrize(("forge", "reason"), FORGED.values(), ids=FORGED.keys())
def test_a_token_not_for_this_api_is_refused(entra, forge, reason):
    # given
    token = forge(entra)

    # when
    with pytest.raises(tokens.InvalidToken) as error:
        tokens.verify_access_token(token)

    # then
    assert error.value.reason.startswith(reason)
    assert error.value.expired is False


def test_an_expired_token_is_refused_as_expired(entra):
    with pytest.raises(tokens.InvalidToken) as error:
        tokens.verify_access_token(_expired(entra))
    assert error.value.expired is True


def test_entras_v1_issuer_counts_only_for_entra_itself(settings):
    # given
    settings.ENTRA_TENANT_ID = "tenant-1"

    # when
    settings.ENTRA_AUTHORITY = "https://login.microsoftonline.com"
    at_entra = tokens.issuers()
    settings.ENTRA_AUTHORITY = "https://idp.example.com"
    elsewhere = tokens.issuers()

    # then
    assert at_entra == (
        "https://login.microsoftonline.com/tenant-1/v2.0",
        "https://sts.windows.net/tenant-1/",
    )
    assert elsewhere == ("https://idp.example.com/tenant-1/v2.0",)


def test_the_keys_are_kept_and_an_unknown_kid_fetches_them_at_most_once_a_minute(entra):
    # given
    fetch = jwt.PyJWKClient.fetch_data
    with mock.patch.object(jwt.PyJWKClient, "fetch_data", autospec=True, side_effect=fetch) as got:
        # when: valid tokens, then unknown kids, a second apart and a minute later
        for _ in range(3):
            tokens.verify_access_token(entra.mint())
        for _ in range(2):
            with pytest.raises(tokens.InvalidToken):
                tokens.verify_access_token(_unknown_kid(entra))
        fetches_within_a_minute = got.call_count
        later = SimpleNamespace(monotonic=lambda: time.monotonic() + 61)
        with mock.patch.object(jwt.jwks_client, "time", later):
            with pytest.raises(tokens.InvalidToken):
                tokens.verify_access_token(_unknown_kid(entra))

    # then
    assert fetches_within_a_minute == 1
    assert got.call_count == 2


def test_a_kept_key_is_checked_on_the_event_loop(entra):
    # given: the keys, fetched once
    tokens.verify_access_token(entra.mint())

    # when
    with mock.patch("linking.tokens.asyncio.to_thread", side_effect=AssertionError) as to_thread:
        claims = asyncio.run(tokens.verify_access_token_async(entra.mint("bob")))

    # then
    assert claims["oid"] == entra.oid("bob")
    to_thread.assert_not_called()


def test_keys_that_cannot_be_fetched_are_a_503_not_a_401(entra, settings):
    # given: an authority nothing listens on
    settings.ENTRA_AUTHORITY = "http://127.0.0.1:9"
    headers = {"authorization": f"Bearer {entra.mint()}"}

    # when
    with pytest.raises(ApiError) as error:
        asyncio.run(auth.authenticate(headers))

    # then
    assert (error.value.status, error.value.code) == (503, "service_unavailable")


# --- the Responses API, in process ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the views work on the database in threads of their own
def test_a_token_caller_is_the_principal_with_a_link_of_its_claims(entra):
    # given
    entra.people["alice"] = {"groups": ["g-staff"]}

    # when
    response = _create(entra.mint("alice"))

    # then
    assert response.status_code == 200
    assert response.json()["output"][0]["content"][0]["text"].startswith('You said: "hello".')
    identity = _identity_of(entra, "alice")
    grant = LinkGrant.objects.active().get(identity=identity)
    assert grant.source == LinkGrant.Source.TOKEN
    assert (grant.tenant_id, grant.object_id) == (entra.tenant, entra.oid("alice"))
    assert grant.upn == "alice@contoso.example"
    assert grant.claims["groups"] == ["g-staff"]
    run = Run.objects.get()
    assert run.isolation_key == f"api:entra.{entra.oid('alice')}"
    assert "api_key" not in run.attributes


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        (_expired, "The access token has expired."),
        (FORGED["wrong audience"][0], "The access token is not valid for this API."),
        (FORGED["wrong tid"][0], "The access token is not valid for this API."),
        (FORGED["bad signature"][0], "The access token is not valid for this API."),
        (_unknown_kid, "The access token is not valid for this API."),
    ],
    ids=["expired", "wrong audience", "wrong tid", "bad signature", "unknown kid"],
)
@pytest.mark.django_db(transaction=True)
def test_an_invalid_token_is_a_401(entra, forge, message):
    # when
    response = _create(forge(entra))

    # then
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"
    assert response.json()["error"]["message"] == message
    assert Identity.objects.exists() is False
    assert Run.objects.exists() is False


@pytest.mark.django_db(transaction=True)
def test_a_token_is_an_unknown_api_key_while_linking_is_off(fake_entra):
    # when
    response = _create(fake_entra.mint())

    # then
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert Run.objects.exists() is False


@pytest.mark.parametrize(
    "header", ["x-agent-user-id", "x-agent-user-isolation-key", "x-agent-chat-isolation-key"]
)
@pytest.mark.django_db(transaction=True)
def test_a_token_caller_may_not_name_users(entra, header):
    # when
    response = _create(entra.mint(), **{header: "mallory"})

    # then
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "untrusted_caller"
    assert Identity.objects.exists() is False
    assert Run.objects.exists() is False


@pytest.mark.django_db(transaction=True)
def test_a_token_caller_and_its_linked_telegram_user_are_one_person(entra):
    # given: a Telegram user who linked alice's account by signing in
    telegram = Identity.objects.create(
        channel="telegram", native_id="1111111", isolation_key="telegram:1111111"
    )
    LinkGrant.objects.create(
        identity=telegram,
        tenant_id=entra.tenant,
        object_id=entra.oid("alice"),
        claims={"tid": entra.tenant, "oid": entra.oid("alice")},
        source=LinkGrant.Source.CEREMONY,
    )

    # when
    assert _create(entra.mint("alice")).status_code == 200

    # then
    api = _identity_of(entra, "alice")
    assert person_of(api).identities == (telegram, api)
    assert person_of(telegram).identities == (telegram, api)


@pytest.fixture
def staff_only(db):
    """The API open only to members of group g-staff."""
    staff = Allowlist.objects.create(name="staff")
    AllowlistEntry.objects.create(
        allowlist=staff, kind=AllowlistEntry.Kind.CLAIM, claim="groups", value="g-staff"
    )
    return ChannelPolicy.objects.create(channel="api", allowlist=staff)


@pytest.mark.django_db(transaction=True)
def test_a_claim_allowlist_decides_on_the_tokens_groups(entra, staff_only):
    # given
    entra.people["alice"] = {"groups": ["g-staff"]}
    entra.people["bob"] = {"groups": ["g-guests"]}

    # when
    alice = _create(entra.mint("alice"))
    bob = _create(entra.mint("bob"))

    # then
    assert alice.status_code == 200
    assert bob.status_code == 403
    assert bob.json()["error"]["code"] == "access_denied"
    assert Run.objects.filter(isolation_key=f"api:entra.{entra.oid('bob')}").exists() is False
    assert _identity_of(entra, "bob").refusals == 1


@pytest.mark.django_db(transaction=True)
def test_a_channel_that_requires_a_link_refuses_api_keys_and_admits_tokens(entra, api_key_factory):
    # given
    ChannelPolicy.objects.create(channel="api", require_link=True)
    _, raw_key = api_key_factory()

    # when
    with_key = _create(raw_key)
    with_token = _create(entra.mint())

    # then
    assert with_key.status_code == 403
    assert with_key.json()["error"]["code"] == "link_required"
    assert with_token.status_code == 200
    assert Run.objects.count() == 1


# --- live ----------------------------------------------------------------------------------------


def test_the_openai_sdk_calls_with_a_token_as_its_api_key(fake_entra, live_server_factory, live_db):
    # given: a server with linking on, and an SDK client per person
    url = live_server_factory(**entra_env(fake_entra))

    alice, bob = (sdk_client(url, fake_entra.mint(name)) for name in ("alice", "bob"))

    # when
    created = alice.responses.create(model="demo", input="hello there")
    retrieved = alice.responses.retrieve(created.id)
    items = alice.responses.input_items.list(created.id)

    # then: alice's responses are hers alone
    assert created.output_text.startswith('You said: "hello there".')
    assert retrieved.output_text == created.output_text
    assert [item.content[0].text for item in items.data] == ["hello there"]
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(created.id)
    alice.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(created.id)

    # and the gate refuses an expired token before reading the body
    with pytest.raises(openai.AuthenticationError) as error:
        sdk_client(url, _expired(fake_entra)).responses.create(model="demo", input="hi")
    assert error.value.code == "invalid_token"
