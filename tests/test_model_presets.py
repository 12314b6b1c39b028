"""The built-in model targets (AFHOST_TARGET=openai, azure-openai, openai-compatible), end to end
against a fake OpenAI-compatible service on loopback: the Responses API through a live server and
the official openai SDK (blocking and streamed), Telegram in process, the start-up probe, and
what a caller is told when the model service fails."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import io
import logging
import os
import re
import socket
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_framework import Message
from agent_framework.exceptions import ChatClientException
from django.conf import settings

from afhost import checks
from afhost.model_presets import ModelAgent, explain_model_failure
from afhost.models import Run
from afhost.targets import TargetLoadError, get_target, load_target
from channels_app.telegram.models import TelegramUpdate
from channels_app.telegram.processing import FAILED_ANSWER
from tests.conftest import sdk_client
from tests.fakes.openai_api import FakeOpenAIApi

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-0123456789abcdef"
MODEL = "gpt-test"
INSTRUCTIONS = "Answer in one short sentence."
PRIVATE = 1111111


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAIApi]:
    with FakeOpenAIApi(api_key=KEY, models=[MODEL], stream_delay=0.005) as fake:
        yield fake


@pytest.fixture
def openai_api(fake_openai) -> FakeOpenAIApi:
    fake_openai.reset()
    return fake_openai


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def model_env(fake: FakeOpenAIApi, preset: str = "openai", **overrides: str) -> dict[str, str]:
    """The environment that makes afhost host the fake service's model through `preset`."""
    env = {
        "AFHOST_TARGET": preset,
        "AFHOST_MODEL": MODEL,
        "AFHOST_INSTRUCTIONS": INSTRUCTIONS,
        "AFHOST_TEMPERATURE": "0.2",
        "AFHOST_MODEL_API": "",
    }
    if preset == "azure-openai":
        env |= {"AZURE_OPENAI_ENDPOINT": fake.url, "AZURE_OPENAI_API_KEY": KEY}
    else:
        env |= {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": f"{fake.url}/v1"}
    return env | overrides


@pytest.fixture
def use_model(settings, openai_api) -> Iterator:
    """Point this process's target at the fake service: use_model(preset, **setting overrides)."""

    def configure(preset: str = "openai", **overrides: str) -> None:
        for name, value in model_env(openai_api, preset, **overrides).items():
            setattr(settings, name, float(value) if name == "AFHOST_TEMPERATURE" else value)
        get_target.cache_clear()

    get_target.cache_clear()
    yield configure
    get_target.cache_clear()


def _log(tmp_path: Path) -> str:
    """What the test's (only) live server logged."""
    [log] = tmp_path.glob("daphne-*.log")
    return log.read_text()


# --- Configuration -----------------------------------------------------------------------------


def test_the_demo_agent_stays_the_default_when_nothing_is_set():
    # given: an environment without any target or model setting
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AFHOST_", "OPENAI_", "AZURE_OPENAI_"))
    }
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "from afhost.targets import get_target; "
        "print(settings.AFHOST_TARGET, type(get_target()).__name__, get_target().name)"
    )

    # when
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "afhost.settings", "SECRET_KEY": "x" * 50},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    # then
    assert result.stdout.split() == ["afhost.demo:agent", "RawAgent", "afhost-demo"]


@pytest.mark.parametrize(
    ("preset", "overrides", "message"),
    [
        ("openai", {"AFHOST_MODEL": ""}, "AFHOST_TARGET=openai needs AFHOST_MODEL"),
        ("openai", {"OPENAI_API_KEY": ""}, "AFHOST_TARGET=openai needs OPENAI_API_KEY"),
        (
            "openai-compatible",
            {"OPENAI_BASE_URL": ""},
            "AFHOST_TARGET=openai-compatible needs OPENAI_BASE_URL",
        ),
        (
            "azure-openai",
            {"AZURE_OPENAI_ENDPOINT": ""},
            "AFHOST_TARGET=azure-openai needs AZURE_OPENAI_ENDPOINT",
        ),
        ("azure-openai", {"AFHOST_MODEL": ""}, "AFHOST_MODEL (the deployment's name)"),
        ("openai", {"AFHOST_MODEL_API": "completions"}, "AFHOST_MODEL_API must be responses"),
        ("openai", {"AFHOST_TEMPERATURE": "2.5"}, "AFHOST_TEMPERATURE must be between 0 and 2"),
    ],
)
def test_an_incomplete_model_configuration_is_a_start_up_error(
    use_model, preset, overrides, message
):
    # when
    use_model(preset, **overrides)
    errors = checks.check_target(None)

    # then
    assert [error.id for error in errors] == ["afhost.E001"]
    assert message in errors[0].msg
    assert "openai, azure-openai, openai-compatible" in errors[0].hint
    with pytest.raises(TargetLoadError, match=re.escape(message)):
        checks.require_runtime_settings()


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


WITHOUT_AZURE_IDENTITY = pytest.mark.skipif(
    _installed("azure.identity"), reason="azure-identity is installed here"
)


@WITHOUT_AZURE_IDENTITY
def test_azure_without_a_key_asks_for_azure_identity_to_sign_in_with_entra(use_model):
    # when
    use_model("azure-openai", AZURE_OPENAI_API_KEY="")

    # then
    with pytest.raises(TargetLoadError, match="needs azure-identity: pip install azure-identity"):
        get_target()


class FakeEntraCredential:
    """Stands in for azure-identity's DefaultAzureCredential: agent-framework-openai takes a
    callable credential as the token provider itself."""

    closed = 0

    async def __call__(self) -> str:
        return KEY  # the fake service takes it as a bearer token

    async def close(self) -> None:
        FakeEntraCredential.closed += 1


@WITHOUT_AZURE_IDENTITY
def test_azure_without_a_key_signs_in_with_an_entra_credential(use_model, openai_api, monkeypatch):
    # given: azure.identity.aio, as azure-identity provides it
    for name in ("azure", "azure.identity", "azure.identity.aio"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(
        sys.modules["azure.identity.aio"],
        "DefaultAzureCredential",
        FakeEntraCredential,
        raising=False,
    )
    use_model("azure-openai", AZURE_OPENAI_API_KEY="")
    FakeEntraCredential.closed = 0

    # when
    answer = asyncio.run(get_target().run([Message("user", ["hello"])]))

    # then
    assert answer.text == f"{MODEL} heard: hello"
    [call] = openai_api.model_calls()
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert "api-key" not in call.headers
    assert FakeEntraCredential.closed == 1  # with its loop


def test_model_settings_come_from_the_environment(openai_api, tmp_path):
    # given
    env = model_env(openai_api, AFHOST_INSTRUCTIONS="")
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print('|'.join(map(str, [s.AFHOST_MODEL, s.AFHOST_TEMPERATURE, s.OPENAI_API_KEY, "
        "s.AFHOST_INSTRUCTIONS, s.AFHOST_MODEL_API])))"
    )
    prompt = tmp_path / "instructions.txt"
    prompt.write_text("Be brief.\n")

    # when
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env, "AFHOST_INSTRUCTIONS_FILE": str(prompt)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    # then
    assert result.stdout.strip() == f"{MODEL}|0.2|{KEY}|Be brief.|"


def test_api_keys_are_redacted_from_logs(settings):
    # given
    settings.OPENAI_API_KEY = KEY
    settings.AZURE_OPENAI_API_KEY = "azure-key-9876543210"
    console = next(h for h in logging.getLogger().handlers if h.get_name() == "console")
    output = io.StringIO()
    stream = console.setStream(output)

    # when
    try:
        logging.getLogger("openai").warning("keys %s and %s", KEY, "azure-key-9876543210")
    finally:
        console.setStream(stream)

    # then
    assert "keys [REDACTED] and [REDACTED]" in output.getvalue()
    assert KEY not in output.getvalue()


# --- The Responses API, through a live server and the official SDK --------------------------


@pytest.mark.parametrize(
    ("preset", "path"),
    [
        ("openai", "/v1/responses"),
        ("openai-compatible", "/v1/chat/completions"),
        ("azure-openai", "/openai/v1/responses"),
    ],
)
def test_a_model_answers_the_responses_api_blocking_and_streamed(
    live_server_factory, raw_api_key, openai_api, preset, path
):
    # given
    client = sdk_client(live_server_factory(**model_env(openai_api, preset)), raw_api_key)

    # when
    first = client.responses.create(model="any", input="hello", instructions="Say hi.")
    events = list(
        client.responses.create(
            model="any", input="how are you?", previous_response_id=first.id, stream=True
        )
    )

    # then: the model's answers, whole, and streamed once (deltas that add up to the answer)
    assert (first.status, first.output_text) == ("completed", f"{MODEL} heard: hello")
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    completed = events[-1]
    assert completed.type == "response.completed"
    assert "".join(deltas) == completed.response.output_text == f"{MODEL} heard: how are you?"
    assert len(deltas) > 1
    # and what reached the model: its name, instructions, temperature, history, the key
    [blocking, streamed] = openai_api.model_calls()
    assert (blocking.path, streamed.path) == (path, path)
    assert {blocking.key, streamed.key} == {KEY}
    assert blocking.body["model"] == streamed.body["model"] == MODEL
    assert blocking.body["temperature"] == streamed.body["temperature"] == 0.2
    assert (blocking.body.get("stream"), streamed.body["stream"]) == (False, True)
    if path.endswith("/responses"):
        assert blocking.body["instructions"] == f"{INSTRUCTIONS}\nSay hi."
        assert streamed.body["instructions"] == INSTRUCTIONS
        assert blocking.body["store"] is streamed.body["store"] is False
        assert [item["role"] for item in streamed.body["input"]] == ["user", "assistant", "user"]
    else:
        assert blocking.body["messages"][0] == {
            "role": "system",
            "content": f"{INSTRUCTIONS}\nSay hi.",
        }
        assert [m["role"] for m in streamed.body["messages"]] == [
            "system",
            "user",
            "assistant",
            "user",
        ]
        assert streamed.body["stream_options"] == {"include_usage": True}
    assert (first.usage.input_tokens, first.usage.output_tokens) == (1, 3)
    assert Run.objects.filter(status=Run.Status.COMPLETED).count() == 2


def test_the_sdk_stream_helper_accepts_a_streamed_model_answer(
    live_server_factory, raw_api_key, openai_api
):
    # given
    client = sdk_client(live_server_factory(**model_env(openai_api)), raw_api_key)

    # when
    with client.responses.stream(model="any", input="one two three") as stream:
        text = "".join(
            event.delta for event in stream if event.type == "response.output_text.delta"
        )
        final = stream.get_final_response()

    # then
    assert text == final.output_text == f"{MODEL} heard: one two three"
    assert final.output[0].content[0].text == text


def test_a_wrong_key_is_a_start_up_warning_and_a_failed_response_with_a_reason(
    live_server_factory, raw_api_key, openai_api, tmp_path
):
    # given
    env = model_env(openai_api, OPENAI_API_KEY="sk-wrong-key-0000000000")
    client = sdk_client(live_server_factory(**env), raw_api_key)

    # when
    blocking = client.responses.create(model="any", input="hello")
    events = list(client.responses.create(model="any", input="hello", stream=True))

    # then: the caller reads why
    reason = "The model service refused the host's credentials (HTTP 401)."
    assert blocking.status == "failed"
    assert (blocking.error.code, blocking.error.message) == ("server_error", reason)
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.message == reason
    assert not [event for event in events if event.type == "response.output_text.delta"]
    # and the operator was warned at start, without the key
    log = _log(tmp_path)
    assert "afhost.W010" in log
    assert "refused the credentials (HTTP 401)" in log
    assert "sk-wrong-key-0000000000" not in log
    run = Run.objects.filter(status=Run.Status.FAILED).first()
    assert "401" in run.error_detail
    assert "Traceback" not in run.error_detail


def test_an_unreachable_endpoint_is_a_start_up_warning_and_a_failed_response_with_a_reason(
    live_server_factory, raw_api_key, openai_api, tmp_path
):
    # given
    env = model_env(openai_api, "openai-compatible", OPENAI_BASE_URL=_closed_port_url())
    client = sdk_client(live_server_factory(**env), raw_api_key)

    # when
    response = client.responses.create(model="any", input="hello")

    # then
    assert response.status == "failed"
    assert response.error.message == "The model service could not be reached."
    log = _log(tmp_path)
    assert "afhost.W011" in log
    assert "could not be reached" in log
    assert openai_api.calls == []


# --- Telegram, in process ----------------------------------------------------------------------


def test_a_model_answers_on_telegram(
    use_model, openai_api, telegram_inbox, telegram_api, telegram_update
):
    # given
    use_model("openai-compatible")

    # when
    telegram_inbox.deliver(
        telegram_update("private_text", text="my name is Ada"),
        telegram_update("private_text", text="who am I?"),
    )

    # then
    assert telegram_api.sent_texts(PRIVATE) == [
        f"{MODEL} heard: my name is Ada",
        f"{MODEL} heard: who am I?",
    ]
    second = openai_api.model_calls()[-1]
    assert [m["role"] for m in second.body["messages"]] == ["system", "user", "assistant", "user"]
    assert second.body["messages"][1]["content"] == "my name is Ada"
    assert set(TelegramUpdate.objects.values_list("status", flat=True)) == {"processed"}


def test_a_failing_model_gets_an_apology_on_telegram_and_a_reason_for_the_operator(
    use_model, telegram_inbox, telegram_api, telegram_update
):
    # given
    use_model("openai", OPENAI_API_KEY="sk-wrong-key-0000000000")

    # when
    telegram_inbox.deliver(telegram_update("private_text", text="hello"))

    # then
    assert telegram_api.sent_texts(PRIVATE) == [FAILED_ANSWER]
    update = TelegramUpdate.objects.get()
    assert update.status == "failed"
    assert update.run.status == Run.Status.FAILED
    assert update.run.error == {
        "code": "server_error",
        "message": "The model service refused the host's credentials (HTTP 401).",
    }
    assert "401" in update.last_error


# --- The start-up probe (a system check) -------------------------------------------------------


def _warnings() -> list[tuple[str, str]]:
    return [(warning.id, warning.msg) for warning in checks.check_model_service(None)]


def test_a_healthy_model_service_passes_the_probe(use_model, openai_api):
    # given
    use_model("openai")

    # when
    warnings = _warnings()

    # then
    assert warnings == []
    [call] = openai_api.calls
    assert (call.method, call.path, call.key) == ("GET", "/v1/models", KEY)


@pytest.mark.parametrize(
    ("overrides", "warning_id", "words"),
    [
        ({"OPENAI_API_KEY": "sk-wrong-key-0000000000"}, "afhost.W010", "refused the credentials"),
        ({"OPENAI_BASE_URL": "closed port"}, "afhost.W011", "could not be reached"),
        ({"AFHOST_MODEL": "gpt-nope"}, "afhost.W012", "does not offer the model 'gpt-nope'"),
        ({"lists_models": False}, "afhost.W013", "answered HTTP 404 to GET /models"),
    ],
)
def test_a_model_service_that_would_fail_turns_is_a_warning(
    use_model, openai_api, overrides, warning_id, words
):
    # given
    if overrides.pop("lists_models", True) is False:
        openai_api.lists_models = False
    if overrides.get("OPENAI_BASE_URL") == "closed port":
        overrides["OPENAI_BASE_URL"] = _closed_port_url()
    use_model("openai", **overrides)

    # when
    warnings = _warnings()

    # then
    [(found_id, message)] = warnings
    assert found_id == warning_id
    assert words in message
    assert "sk-wrong-key" not in message


def test_the_probe_gives_up_quickly_and_runs_once_per_process(use_model, openai_api, monkeypatch):
    # given: a service that accepts the connection and never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setattr("afhost.model_presets.PROBE_SECONDS", 0.3)
        use_model("openai", OPENAI_BASE_URL=f"http://127.0.0.1:{silent.getsockname()[1]}/v1")

        # when
        first = _warnings()
        again = _warnings()

    # then
    assert first == again
    [(warning_id, message)] = first
    assert warning_id == "afhost.W011"
    assert "no answer within 0.3 s" in message


def test_other_targets_are_not_probed(openai_api):
    assert settings.AFHOST_TARGET == "tests.agents:agent"
    assert checks.check_model_service(None) == []
    assert openai_api.calls == []


# --- What callers are told -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (
            429,
            "rate_limit_exceeded",
            (
                "rate_limit_exceeded",
                "The model service is rate limiting requests (HTTP 429); try again later.",
            ),
        ),
        (
            500,
            "server_error",
            ("server_error", "The model service answered HTTP 500 (server_error)."),
        ),
        (
            400,
            "content_filter",
            ("server_error", "The model service answered HTTP 400 (content_filter)."),
        ),
    ],
)
def test_a_model_service_error_is_explained_in_our_words(
    use_model, openai_api, status, code, expected
):
    # given
    use_model("openai")
    openai_api.fail_with(status, code=code, message="secret prompt text quoted back")

    # when
    with pytest.raises(ChatClientException) as error:
        asyncio.run(get_target().run([Message("user", ["hello"])]))

    # then
    assert explain_model_failure(error.value) == expected


def test_other_failures_are_not_explained():
    assert explain_model_failure(RuntimeError("boom")) is None


# --- One agent per event loop ------------------------------------------------------------------


def test_each_event_loop_gets_its_own_agent_and_closes_its_connections(
    use_model, openai_api, caplog
):
    # given
    use_model("azure-openai")
    target = get_target()

    async def turn(text: str) -> str:
        stream = target.run([Message("user", [text])], stream=True)
        [update async for update in stream]
        return (await stream.get_final_response()).text

    # when: two loops, one after the other, as async_to_sync runs each call
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        answers = [asyncio.run(turn("one")), asyncio.run(turn("two"))]
        gc.collect()

    # then
    assert isinstance(target, ModelAgent)
    assert answers == [f"{MODEL} heard: one", f"{MODEL} heard: two"]
    assert [call.headers.get("api-key") for call in openai_api.model_calls()] == [KEY, KEY]
    assert [record.getMessage() for record in caplog.records if record.name == "asyncio"] == []


def test_a_preset_is_loaded_by_name(use_model):
    # when
    use_model("openai-compatible")

    # then
    target = load_target("openai-compatible")
    assert isinstance(target, ModelAgent)
    assert (target.name, target.config.api) == ("afhost-openai-compatible", "chat-completions")
