import asyncio

import pytest
from agent_framework import AgentResponseUpdate, Content, Message

from afhost.checks import check_target
from afhost.targets import CallableAgent, TargetLoadError, TextAppends, get_target, load_target


def _run(coroutine):
    return asyncio.run(coroutine)


def test_it_loads_an_agent_framework_agent():
    # when
    target = load_target("afhost.demo:agent")

    # then
    response = _run(target.run([Message("user", ["hi"])]))
    assert response.text.startswith('You said: "hi".')


def test_a_plain_async_callable_answers_with_its_text():
    # given
    target = load_target("tests.agents:shout")

    # when
    response = _run(target.run([Message("user", ["quiet please"])]))

    # then
    assert isinstance(target, CallableAgent)
    assert response.text == "QUIET PLEASE"


def test_an_async_generator_callable_streams_its_chunks():
    # given
    target = load_target("tests.agents:spell")

    async def collect():
        stream = target.run([Message("user", ["abc"])], stream=True)
        updates = [update.text async for update in stream]
        return updates, await stream.get_final_response()

    # when
    updates, final = _run(collect())

    # then
    assert updates == ["a", "b", "c"]
    assert final.text == "abc"


def test_instructions_reach_a_callable_as_a_leading_system_message():
    # given
    target = load_target("tests.agents:count_turns")
    history = [Message("user", ["a"]), Message("assistant", ["b"]), Message("user", ["c"])]

    # when
    response = _run(target.run(history, options={"instructions": "Be kind."}))

    # then
    assert response.text == "2 user, 1 assistant, 1 system"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no-colon", "must look like 'package.module:attribute'"),
        ("tests.nowhere:agent", "cannot import 'tests.nowhere'"),
        ("tests.agents:missing", "has no 'missing'"),
        ("tests.agents:not_callable", "expected an agent_framework agent or an async callable"),
        ("tests.agents:get_weather", "expected an agent_framework agent or an async callable"),
        ("tests.workflows:doubling", "the workflow's start executor takes int"),
    ],
)
def test_a_target_that_cannot_be_hosted_is_refused_clearly(path, message):
    with pytest.raises(TargetLoadError, match=message):
        load_target(path)


def test_the_system_check_reports_a_bad_target(settings):
    # given
    settings.AFHOST_TARGET = "tests.agents:missing"
    get_target.cache_clear()

    # when
    errors = check_target(None)

    # then
    get_target.cache_clear()
    assert [error.id for error in errors] == ["afhost.E001"]
    assert "has no 'missing'" in errors[0].msg


def _text_update(text, merge_mode=None):
    return AgentResponseUpdate(
        role="assistant", contents=[Content.from_text(text, merge_mode=merge_mode)]
    )


def _streamed(updates):
    appends = TextAppends()
    return [content.text for u in updates for content in appends(u).contents]


def test_a_streamed_replacement_that_restates_the_text_adds_nothing():
    # agent-framework-openai ends each Responses API text part with its whole text, "replace"
    assert _streamed(
        [_text_update("Hello "), _text_update("world"), _text_update("Hello world", "replace")]
    ) == ["Hello ", "world"]


def test_a_streamed_replacement_that_continues_the_text_adds_the_rest():
    assert _streamed([_text_update("Hel"), _text_update("Hello!", "replace")]) == ["Hel", "lo!"]


def test_a_streamed_replacement_that_contradicts_the_text_is_left_out():
    assert _streamed([_text_update("Hi"), _text_update("Bye", "replace"), _text_update("!")]) == [
        "Hi",
        "!",
    ]


def test_a_replacement_covers_only_the_text_since_other_content():
    # given
    call = AgentResponseUpdate(
        role="assistant", contents=[Content.from_function_call("c1", "get_weather", arguments="{}")]
    )

    # when
    texts = _streamed(
        [_text_update("one"), call, _text_update("two"), _text_update("two", "replace")]
    )

    # then
    assert texts == ["one", None, "two"]


def test_updates_without_replacements_pass_unchanged():
    update = _text_update("as is")
    assert TextAppends()(update) is update
