"""What a turn loads of its conversation: the newest turns within AFHOST_MAX_HISTORY_BYTES, or,
with OpenAI's default `truncation: "disabled"`, a refusal when they do not fit."""

import openai
import pytest

from afhost.models import Run
from tests.conftest import sdk_client


@pytest.fixture
def client(live_server_factory, raw_api_key):
    """A live server whose target counts the messages it is given, and whose history budget
    holds one earlier turn of the inputs below (each ~1,650 characters stored), not two."""
    url = live_server_factory(
        AFHOST_TARGET="tests.agents:count_turns", AFHOST_MAX_HISTORY_BYTES="2048"
    )
    return sdk_client(url, raw_api_key)


def _two_turns(client):
    first = client.responses.create(model="demo", input="a" * 1200)
    return client.responses.create(model="demo", input="b" * 1200, previous_response_id=first.id)


def test_with_truncation_auto_the_oldest_turns_are_left_out(client):
    # given
    second = _two_turns(client)

    # when
    third = client.responses.create(
        model="demo", input="c", previous_response_id=second.id, truncation="auto"
    )

    # then: the target saw the second turn and the new input, not the first turn
    assert second.output_text == "2 user, 1 assistant, 0 system"
    assert third.output_text == "2 user, 1 assistant, 0 system"
    assert third.truncation == "auto"


def test_with_truncation_disabled_an_over_long_history_is_refused(client):
    # given
    second = _two_turns(client)

    # when
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model="demo", input="c", previous_response_id=second.id)

    # then
    assert error.value.body["code"] == "context_length_exceeded"
    assert error.value.body["param"] == "input"
    assert second.truncation == "disabled"
    assert Run.objects.count() == 2
