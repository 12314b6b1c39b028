"""Bad requests get the matching 4xx with OpenAI's error body; nothing is created for them."""

import httpx
import openai
import pytest

from afhost.models import Run


@pytest.fixture
def post(live_server_url, raw_api_key):
    def send(body, *, headers=None, path="/v1/responses", method="POST"):
        headers = {"Authorization": f"Bearer {raw_api_key}", **(headers or {})}
        content = body if isinstance(body, bytes) else None
        json = None if isinstance(body, bytes) else body
        return httpx.request(
            method, live_server_url + path, content=content, json=json, headers=headers
        )

    return send


def _error(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b"[1, 2]", None, "invalid_json"),
        ({"model": "demo"}, "input", "missing_required_parameter"),
        ({"input": 42}, "input", "invalid_type"),
        ({"input": []}, "input", "empty_array"),
        ({"input": "hi", "stream": "yes"}, "stream", "invalid_type"),
        ({"input": "hi", "temperature": 7}, "temperature", "invalid_value"),
        ({"input": "hi", "bogus": 1}, "bogus", "unknown_parameter"),
        ({"input": "hi", "prompt": {"id": "p"}}, "prompt", "unsupported_parameter"),
        (
            {"input": "hi", "tools": [{"type": "function", "name": "f"}]},
            "tools",
            "unsupported_parameter",
        ),
        ({"input": "hi", "metadata": {"k": 1}}, "metadata.k", "invalid_type"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "invalid_value"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "input[0].content[0].type",
            "invalid_value",
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_image", "image_url": "data:image/png;base64,%%%"}
                        ],
                    }
                ]
            },
            "input[0].content[0].image_url",
            "invalid_value",
        ),
        (
            {"input": "hi", "background": True, "store": False},
            "background",
            "unsupported_parameter",
        ),
        (
            {"input": "hi", "previous_response_id": "resp_x", "conversation": "c"},
            "conversation",
            "mutually_exclusive_parameters",
        ),
        ({"input": "hi", "conversation": "no spaces allowed"}, "conversation", "invalid_value"),
        # What the database cannot store is refused up front (PostgreSQL: NUL, lone surrogates).
        (b'{"input": "a\\u0000b"}', None, "invalid_value"),
        (b'{"input": "hi", "metadata": {"k": "\\ud800"}}', None, "invalid_value"),
        ({"input": "hi", "model": "m" * 201}, "model", "invalid_value"),
        # At most AFHOST_MAX_INPUT_ITEMS (2048) input items and content parts together.
        ({"input": [{"role": "user", "content": "x"}] * 2049}, "input", "array_above_max_length"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}] * 2048}]},
            "input",
            "array_above_max_length",
        ),
        # 100,000 arrays are refused from their count, before the parser meets their depth
        (b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "input", "array_above_max_length"),
        (b'{"input": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", None, "invalid_json"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_data": "é"}]}]},
            "input[0].content[0].file_data",
            "invalid_value",
        ),
        # Parameters the host ignores still take only OpenAI's types and values.
        ({"input": "hi", "truncation": "sometimes"}, "truncation", "invalid_value"),
        ({"input": "hi", "truncation": True}, "truncation", "invalid_type"),
        ({"input": "hi", "service_tier": "cheapest"}, "service_tier", "invalid_value"),
        ({"input": "hi", "service_tier": {"tier": "flex"}}, "service_tier", "invalid_type"),
        ({"input": "hi", "prompt_cache_key": 42}, "prompt_cache_key", "invalid_type"),
        ({"input": "hi", "prompt_cache_key": ["k"]}, "prompt_cache_key", "invalid_type"),
        ({"input": "hi", "include": "reasoning.encrypted_content"}, "include", "invalid_type"),
        ({"input": "hi", "include": [{"a": 1}]}, "include[0]", "invalid_type"),
        (
            {"input": "hi", "include": ["reasoning.encrypted_content", "everything"]},
            "include[1]",
            "invalid_value",
        ),
    ],
)
def test_invalid_bodies_are_rejected_with_the_parameter_named(post, body, param, code):
    # when
    response = post(body)

    # then
    error = _error(response, 400)
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error"
    assert Run.objects.exists() is False


def test_parameters_the_host_ignores_are_accepted_with_openai_values(client):
    # when
    response = client.responses.create(
        model="demo",
        input="hi",
        truncation="disabled",
        service_tier="flex",
        prompt_cache_key="team-42",
        include=["reasoning.encrypted_content", "message.output_text.logprobs"],
    )

    # then
    assert response.status == "completed"


def test_a_missing_api_key_is_unauthorized(live_server_url, live_db):
    # when
    response = httpx.post(f"{live_server_url}/v1/responses", json={"input": "hi"})

    # then
    assert _error(response, 401)["code"] == "missing_api_key"
    assert Run.objects.exists() is False


def test_a_wrong_or_revoked_api_key_is_unauthorized(
    openai_client_factory, api_key_factory, live_db
):
    # given
    api_key, raw_key = api_key_factory()
    api_key.revoke()

    # then
    for key in ("afh_wrong", raw_key):
        with pytest.raises(openai.AuthenticationError) as error:
            openai_client_factory(key).responses.create(model="demo", input="hi")
        assert error.value.body["code"] == "invalid_api_key"


def test_an_oversized_body_is_refused(post, settings):
    # when
    response = post({"input": "x" * (11 * 1024 * 1024)})

    # then
    assert _error(response, 413)["code"] == "request_too_large"
    assert Run.objects.exists() is False


def test_unknown_ids_are_not_found(client):
    for call in (
        lambda: client.responses.retrieve("resp_" + "a" * 32),
        lambda: client.responses.retrieve("not-an-id"),
        lambda: client.responses.cancel("resp_" + "b" * 32),
        lambda: client.responses.delete("resp_nope"),
        lambda: client.responses.input_items.list("resp_" + "c" * 32),
    ):
        with pytest.raises(openai.NotFoundError) as error:
            call()
        assert error.value.body["type"] == "invalid_request_error"


def test_wrong_methods_and_unknown_paths_get_json_errors(post):
    assert _error(post(b"", method="GET"), 405)["code"] == "method_not_allowed"
    assert _error(post({"input": "hi"}, path="/v1/nothing-here"), 404)["code"] == "not_found"


def test_bad_query_parameters_are_rejected(client, post):
    # given
    created = client.responses.create(model="demo", input="hi", background=True, stream=True)
    response_id = next(iter(created)).response.id
    created.close()

    # then
    bad_cursor = post(
        b"", method="GET", path=f"/v1/responses/{response_id}?stream=true&starting_after=abc"
    )
    assert _error(bad_cursor, 400)["param"] == "starting_after"
    bad_limit = post(b"", method="GET", path=f"/v1/responses/{response_id}/input_items?limit=1000")
    assert _error(bad_limit, 400)["param"] == "limit"
    not_a_number = post(b"", method="GET", path=f"/v1/responses/{response_id}/input_items?limit=²")
    assert _error(not_a_number, 400)["param"] == "limit"


def test_a_host_outside_allowed_hosts_is_refused(post):
    # when
    response = post({"input": "hi"}, headers={"Host": "evil.example.com"})

    # then
    assert _error(response, 400)["code"] == "invalid_host"
    assert Run.objects.exists() is False


@pytest.mark.parametrize(
    ("path", "method"),
    [("/v1/responses", "POST"), ("/v1/responses/resp_0123", "GET"), ("/responses", "POST")],
)
def test_a_repeated_credential_header_is_refused_on_every_route(
    live_server_url, api_key_factory, live_db, path, method
):
    # given: a good key and a bad one, in two Authorization headers, in either order
    _, good = api_key_factory()
    for first, second in ((good, "afh_bad"), ("afh_bad", good)):
        # when
        response = httpx.request(
            method,
            f"{live_server_url}{path}",
            json={"input": "hi"},
            headers=[("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")],
        )

        # then
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_a_repeated_user_header_is_refused(live_server_url, api_key_factory, live_db):
    # given
    _, trusted = api_key_factory(is_trusted=True)

    # when
    response = httpx.post(
        f"{live_server_url}/v1/responses",
        json={"input": "hi"},
        headers=[
            ("Authorization", f"Bearer {trusted}"),
            ("x-agent-user-id", "mallory"),
            ("x-agent-user-id", "alice"),
        ],
    )

    # then
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-agent-user-id"
    assert Run.objects.exists() is False
