import asyncio
from unittest import mock

import pytest

from afhost.services import create_api_key
from channels_app import auth
from channels_app.exceptions import ApiError


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
