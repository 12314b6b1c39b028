import asyncio
from unittest import mock

import pytest
from django.test import AsyncClient

from afhost.handlers import ApiHandler, guard
from afhost.services import create_api_key
from channels_app import auth, turns
from channels_app.exceptions import ApiError
from channels_app.views import ApiGate
from tests.asgi import CreateCall


@pytest.fixture(autouse=True)
def _empty_cache():
    auth._key_cache.clear()
    yield
    auth._key_cache.clear()


@pytest.mark.django_db(transaction=True)  # the lookup runs in a thread of its own
def test_a_revoked_key_stops_working_once_the_cache_expires(settings):
    # given
    settings.AFHOST_API_KEY_CACHE_SECONDS = 5
    api_key, raw_key = create_api_key(name="cached")
    headers = {"authorization": f"Bearer {raw_key}"}
    assert asyncio.run(auth.authenticate(headers)).api_key == api_key

    # when
    api_key.revoke()

    # then: still trusted from the cache, refused once it expires
    assert asyncio.run(auth.authenticate(headers)).api_key == api_key
    with mock.patch("channels_app.auth.time.monotonic", return_value=10**9):
        with pytest.raises(ApiError) as error:
            asyncio.run(auth.authenticate(headers))
    assert error.value.code == "invalid_api_key"


@pytest.mark.parametrize("value", ["with space", "x" * 257, "slash/path", "../etc"])
def test_identity_headers_are_validated(value):
    with pytest.raises(ApiError) as error:
        auth._header({"x-agent-user-id": value}, "x-agent-user-id")
    assert error.value.status == 400


def _identity_of(raw_key: str, **headers: str) -> str:
    caller = asyncio.run(auth.authenticate({"authorization": f"Bearer {raw_key}", **headers}))
    return caller.identity.isolation_key


@pytest.mark.django_db(transaction=True)
def test_isolation_keys_say_which_partition_a_user_belongs_to():
    # given
    own, own_raw = create_api_key(name="own", is_trusted=True)
    _, acme_raw = create_api_key(name="acme", is_trusted=True, partition="acme")

    # when
    in_own = _identity_of(own_raw, **{"x-agent-user-id": "alice"})
    in_acme = _identity_of(acme_raw, **{"x-agent-user-isolation-key": "alice"})
    unnamed = _identity_of(own_raw)

    # then
    assert in_own == f"api:key.{own.public_id}:user.alice"
    assert in_acme == "api:acme:user.alice"
    assert unnamed == f"api:key.{own.public_id}"


@pytest.mark.django_db(transaction=True)
def test_a_user_id_too_long_for_the_partition_is_kept_as_its_digest():
    # given
    api_key, raw_key = create_api_key(name="own", is_trusted=True)
    long_id = "a" * 256

    # when
    isolation_key = _identity_of(raw_key, **{"x-agent-user-id": long_id})

    # then: it fits the 300 characters runs and conversations hold, and stays one per user
    assert len(isolation_key) <= 300
    assert isolation_key.startswith(f"api:key.{api_key.public_id}:user-sha256.")
    assert isolation_key != _identity_of(raw_key, **{"x-agent-user-id": "b" * 256})


@pytest.mark.django_db(transaction=True)  # the caller is admitted in a thread of its own
def test_a_caller_whose_admission_runs_out_as_its_request_starts_is_admitted_again():
    # given: a caller admitted lately, whose admission runs out right after it is looked at
    _, raw_key = create_api_key(name="busy")
    lately = iter([True, False])

    async def create():
        return await AsyncClient().post(
            "/v1/responses",
            {"model": "demo", "input": "hello"},
            content_type="application/json",
            headers={"authorization": f"Bearer {raw_key}"},
        )

    # when
    with mock.patch.object(turns, "_admitted_lately", side_effect=lambda who: next(lately, False)):
        response = asyncio.run(create())

    # then: answered, not failed by a lookup on the event loop
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "completed"


@pytest.mark.django_db(transaction=True)  # the key is looked up in a thread of its own
def test_the_api_gate_hands_the_caller_it_let_in_to_the_view():
    # given: the API routes' application, as afhost.asgi serves them
    api_key, raw_key = create_api_key(name="gated")
    application = guard(ApiHandler(), ApiGate())
    client = CreateCall(raw_key, "hello")

    # when
    with mock.patch("channels_app.auth.hash_api_key", wraps=auth.hash_api_key) as hashed:
        asyncio.run(application(client.scope, client.receive, client.send))

    # then: answered, its key checked once
    assert client.sent[0]["status"] == 200
    assert client.scope[auth.SCOPE_CALLER].api_key == api_key
    assert hashed.call_count == 1
