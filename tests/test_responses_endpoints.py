"""Retrieve, cancel, delete and input_items of foreground responses, and who may see them."""

import httpx
import openai
import pytest


def test_retrieve_returns_the_stored_response(client):
    # given
    created = client.responses.create(model="demo", input="keep me")

    # when
    retrieved = client.responses.retrieve(created.id)

    # then
    assert retrieved.id == created.id
    assert retrieved.output_text == created.output_text
    assert retrieved.status == "completed"


def test_delete_removes_the_response(client):
    # given
    created = client.responses.create(model="demo", input="forget me")

    # when
    client.responses.delete(created.id)

    # then
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_cancelling_a_synchronous_response_is_refused(client):
    # given
    created = client.responses.create(model="demo", input="sync")

    # when
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.cancel(created.id)

    # then
    assert error.value.body["message"] == "Cannot cancel a synchronous response."
    assert client.responses.retrieve(created.id).status == "completed"


def test_only_background_streamed_responses_can_be_resumed(client):
    # given
    plain = client.responses.create(model="demo", input="plain")

    # when
    with pytest.raises(openai.BadRequestError) as error:
        list(client.responses.retrieve(plain.id, stream=True))

    # then
    assert error.value.body["param"] == "stream"


def test_input_items_lists_the_input_newest_first_and_paginates(client):
    # given
    created = client.responses.create(
        model="demo",
        input=[
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two"},
            {"role": "user", "content": [{"type": "input_text", "text": "three"}]},
        ],
    )

    # when
    everything = client.responses.input_items.list(created.id)
    first_page = client.responses.input_items.list(created.id, limit=2, order="asc")
    second_page = client.responses.input_items.list(
        created.id, limit=2, order="asc", after=first_page.data[-1].id
    )

    # then
    assert [item.content[0].text for item in everything.data] == ["three", "two", "one"]
    assert [item.role for item in everything.data] == ["user", "assistant", "user"]
    assert first_page.has_more is True
    assert [item.content[0].text for item in first_page.data] == ["one", "two"]
    assert [item.content[0].text for item in second_page.data] == ["three"]
    assert second_page.has_more is False
    paged = client.responses.input_items.list(created.id, order="asc", limit=1)
    assert [item.id for item in paged] == [item.id for item in reversed(everything.data)]


def test_images_and_tool_outputs_are_accepted_as_input(client):
    # given
    image = "data:image/png;base64,iVBORw0KGgo="

    # when
    created = client.responses.create(
        model="demo",
        input=[
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": image},
                ],
            },
        ],
    )

    # then
    assert "You attached an image (image/png)." in created.output_text
    items = client.responses.input_items.list(created.id, order="asc").data
    assert [item.type for item in items] == ["function_call", "function_call_output", "message"]
    assert items[2].content[1].image_url == image


def test_a_response_is_invisible_to_other_users(openai_client_factory, api_key_factory, live_db):
    # given
    _, trusted_key = api_key_factory("platform", is_trusted=True)
    alice = openai_client_factory(trusted_key, **{"x-agent-user-id": "alice"})
    bob = openai_client_factory(trusted_key, **{"x-agent-user-id": "bob"})
    created = alice.responses.create(
        model="demo", input="alice's secret", background=True, stream=False
    )

    # then
    for call in (
        lambda: bob.responses.retrieve(created.id),
        lambda: bob.responses.cancel(created.id),
        lambda: bob.responses.delete(created.id),
        lambda: bob.responses.input_items.list(created.id),
        lambda: list(bob.responses.retrieve(created.id, stream=True)),
        lambda: bob.responses.create(model="demo", input="steal", previous_response_id=created.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert alice.responses.retrieve(created.id).id == created.id


def test_each_untrusted_key_is_its_own_partition(openai_client_factory, api_key_factory, live_db):
    # given
    first = openai_client_factory(api_key_factory("one")[1])
    second = openai_client_factory(api_key_factory("two")[1])
    created = first.responses.create(model="demo", input="mine")

    # then
    with pytest.raises(openai.NotFoundError):
        second.responses.retrieve(created.id)


def test_trusted_keys_in_their_own_partitions_do_not_share_a_user(
    openai_client_factory, api_key_factory, live_db
):
    # given: two trusted keys, each in its own partition, naming the same user and chat
    alice_headers = {"x-agent-user-id": "alice", "x-agent-chat-isolation-key": "chat-9"}
    first = openai_client_factory(api_key_factory("one", is_trusted=True)[1], **alice_headers)
    second = openai_client_factory(api_key_factory("two", is_trusted=True)[1], **alice_headers)
    created = first.responses.create(model="demo", input="first key's secret")
    first.responses.create(model="demo", input="first key's conversation", conversation="conv_1")

    # when
    in_conversation = second.responses.create(model="demo", input="hi", conversation="conv_1")
    in_chat = second.responses.create(model="demo", input="hi")

    # then
    for call in (
        lambda: second.responses.retrieve(created.id),
        lambda: second.responses.input_items.list(created.id),
        lambda: second.responses.create(model="demo", input="x", previous_response_id=created.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert "Before that you said" not in in_conversation.output_text
    assert "Before that you said" not in in_chat.output_text


def test_keys_in_one_named_partition_share_their_users(
    openai_client_factory, api_key_factory, live_db
):
    # given: two trusted keys an operator put into the partition "acme"
    alice_headers = {"x-agent-user-id": "alice", "x-agent-chat-isolation-key": "chat-9"}
    first_key = api_key_factory("one", is_trusted=True, partition="acme")[1]
    first = openai_client_factory(first_key, **alice_headers)
    second = openai_client_factory(
        api_key_factory("two", is_trusted=True, partition="acme")[1], **alice_headers
    )
    bob = openai_client_factory(first_key, **{"x-agent-user-id": "bob"})
    created = first.responses.create(model="demo", input="shared secret")
    first.responses.create(model="demo", input="shared conversation", conversation="conv_1")

    # when
    in_chat = second.responses.create(model="demo", input="hi")
    in_conversation = second.responses.create(model="demo", input="hi", conversation="conv_1")
    continued = second.responses.create(model="demo", input="x", previous_response_id=created.id)

    # then
    assert second.responses.retrieve(created.id).output_text == created.output_text
    assert 'Before that you said: "shared secret".' in in_chat.output_text
    assert 'Before that you said: "shared secret".' in continued.output_text
    assert 'Before that you said: "shared conversation".' in in_conversation.output_text
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(created.id)


def test_a_key_in_a_named_partition_naming_no_user_speaks_for_itself(
    openai_client_factory, api_key_factory, live_db
):
    # given
    first = openai_client_factory(api_key_factory("one", is_trusted=True, partition="acme")[1])
    second = openai_client_factory(api_key_factory("two", is_trusted=True, partition="acme")[1])
    created = first.responses.create(model="demo", input="the key's own")

    # then
    with pytest.raises(openai.NotFoundError):
        second.responses.retrieve(created.id)
    assert first.responses.retrieve(created.id).id == created.id


def test_an_untrusted_key_may_not_name_a_user(openai_client_factory, raw_api_key):
    # given
    client = openai_client_factory(raw_api_key, **{"x-agent-user-id": "alice"})

    # when
    with pytest.raises(openai.PermissionDeniedError) as error:
        client.responses.create(model="demo", input="hi")

    # then
    assert error.value.body["code"] == "untrusted_api_key"


def test_the_chat_isolation_header_keeps_a_conversation(
    openai_client_factory, api_key_factory, live_db
):
    # given
    _, trusted_key = api_key_factory("platform", is_trusted=True)
    chat = openai_client_factory(
        trusted_key, **{"x-agent-user-isolation-key": "u1", "x-agent-chat-isolation-key": "chat-9"}
    )
    chat.responses.create(model="demo", input="first in chat")

    # when
    second = chat.responses.create(model="demo", input="second in chat")

    # then
    assert 'Before that you said: "first in chat".' in second.output_text


def test_health_endpoints(live_server_url):
    assert httpx.get(f"{live_server_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{live_server_url}/readyz").json() == {"status": "ready"}
    assert httpx.get(f"{live_server_url}/readiness").json() == {"status": "healthy"}


def test_the_routes_also_answer_without_the_v1_prefix(live_server_url, raw_api_key):
    # when
    response = httpx.post(
        f"{live_server_url}/responses",
        json={"model": "demo", "input": "foundry"},
        headers={"Authorization": f"Bearer {raw_api_key}"},
    )

    # then
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
