"""Rendering stored runs as Responses items, in process."""

from agent_framework import Content, Message

from channels_app.responses.rendering import input_items


def _stored(role, contents, message_id):
    message = Message(role, contents)
    message.message_id = message_id
    return message.to_dict()


def test_input_items_of_a_stored_input_keep_their_ids_from_one_request_to_the_next():
    # given: an input with a function call and its result, as a run stores it
    stored = [
        _stored("user", ["what is the weather?"], "msg_1"),
        _stored(
            "assistant",
            [Content.from_function_call(call_id="call_1", name="weather", arguments="{}")],
            "msg_2",
        ),
        _stored("tool", [Content.from_function_result(call_id="call_1", result="sunny")], "msg_3"),
    ]

    # when
    first, second = input_items(stored), input_items(stored)

    # then
    assert [item["type"] for item in first] == ["message", "function_call", "function_call_output"]
    assert [item["id"] for item in first] == [item["id"] for item in second]
    assert len({item["id"] for item in first}) == 3
