"""Built-in targets for a hosted model, configured by environment only: AFHOST_TARGET=openai,
azure-openai or openai-compatible (Ollama, vLLM, LiteLLM, ... by base URL).

Each is an agent_framework Agent over agent-framework-openai's chat client for the Responses API
(`OpenAIChatClient`) or for Chat Completions (`OpenAIChatCompletionClient`), with the model,
instructions and temperature from AFHOST_MODEL, AFHOST_INSTRUCTIONS and AFHOST_TEMPERATURE. The
host keeps every conversation itself, so Responses API calls say `store: false`: the provider
keeps nothing.

The SDK's HTTP connections belong to the event loop that opened them, and agent-framework-openai
does not support one client on several loops: a `ModelAgent` makes one Agent per loop (one in a
server process, one in a worker's engine, one per call where each call runs a loop of its own).

Also here: the start-up probe of the model service (`ModelAgent.probe`, which the system check
afhost.W010-W013 reports), and the words a caller is told when the model service fails
(`explain_model_failure`).
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from agent_framework import Agent, AgentResponse, AgentSession, BaseChatClient
from django.conf import settings

from afhost.targets import TargetLoadError

APIS = ("responses", "chat-completions")
DEFAULT_API = {
    "openai": "responses",
    "azure-openai": "responses",
    "openai-compatible": "chat-completions",
}
# The key sent to an OpenAI-compatible server that needs none (the openai SDK insists on one).
NO_KEY = "none"
# The most the start-up probe of the model service may take, in seconds.
PROBE_SECONDS = 3.0


@dataclass(frozen=True)
class ModelConfig:
    preset: str
    api: str
    model: str
    api_key: str = field(default="", repr=False)
    base_url: str = ""
    azure_endpoint: str = ""
    instructions: str = ""
    temperature: float | None = None

    @property
    def key_setting(self) -> str:
        return "AZURE_OPENAI_API_KEY" if self.preset == "azure-openai" else "OPENAI_API_KEY"

    @property
    def url_setting(self) -> str:
        return "AZURE_OPENAI_ENDPOINT" if self.preset == "azure-openai" else "OPENAI_BASE_URL"


def model_config(preset: str) -> ModelConfig:
    """The preset's configuration from settings; TargetLoadError names what is missing."""

    def missing(name: str, what: str) -> TargetLoadError:
        return TargetLoadError(f"AFHOST_TARGET={preset} needs {name} ({what}); see .env.example.")

    api = settings.AFHOST_MODEL_API or DEFAULT_API[preset]
    if api not in APIS:
        raise TargetLoadError(
            f"AFHOST_MODEL_API must be responses or chat-completions, got {api!r}"
        )
    if not settings.AFHOST_MODEL:
        what = "the deployment's name" if preset == "azure-openai" else "the model's name"
        raise missing("AFHOST_MODEL", what)
    temperature = settings.AFHOST_TEMPERATURE
    if temperature is not None and not 0 <= temperature <= 2:
        raise TargetLoadError(f"AFHOST_TEMPERATURE must be between 0 and 2, got {temperature}")
    config = ModelConfig(
        preset=preset,
        api=api,
        model=settings.AFHOST_MODEL,
        instructions=settings.AFHOST_INSTRUCTIONS,
        temperature=temperature,
    )
    if preset == "azure-openai":
        if not settings.AZURE_OPENAI_ENDPOINT:
            raise missing("AZURE_OPENAI_ENDPOINT", "https://<resource>.openai.azure.com")
        return replace(
            config,
            azure_endpoint=settings.AZURE_OPENAI_ENDPOINT,
            api_key=settings.AZURE_OPENAI_API_KEY,
        )
    if preset == "openai" and not settings.OPENAI_API_KEY:
        raise missing("OPENAI_API_KEY", "an API key from platform.openai.com")
    if preset == "openai-compatible" and not settings.OPENAI_BASE_URL:
        raise missing("OPENAI_BASE_URL", "the server's OpenAI API, e.g. http://127.0.0.1:11434/v1")
    return replace(config, api_key=settings.OPENAI_API_KEY, base_url=settings.OPENAI_BASE_URL)


def _entra_credential() -> Any:
    """Microsoft Entra ID sign-in for Azure OpenAI: azure-identity's DefaultAzureCredential (a
    managed identity, workload identity, environment variables or `az login`)."""
    try:
        from azure.identity.aio import DefaultAzureCredential
    except ImportError:
        raise TargetLoadError(
            "AFHOST_TARGET=azure-openai without AZURE_OPENAI_API_KEY signs in with Microsoft "
            "Entra ID, which needs azure-identity: pip install azure-identity aiohttp "
            "(or set AZURE_OPENAI_API_KEY)."
        ) from None
    return DefaultAzureCredential()


Close = Callable[[], Awaitable[None]]


def build_chat_client(config: ModelConfig) -> tuple[BaseChatClient, Close]:
    """agent-framework-openai's chat client for the configured service and API, and what closes
    the connections it opens (on the event loop that uses it)."""
    from agent_framework.openai import OpenAIChatClient, OpenAIChatCompletionClient

    client_class = OpenAIChatClient if config.api == "responses" else OpenAIChatCompletionClient
    credential = None
    if config.preset == "azure-openai":
        auth: dict[str, Any]
        if config.api_key:
            auth = {"api_key": config.api_key}
        else:
            auth = {"credential": (credential := _entra_credential())}
        chat_client = client_class(config.model, azure_endpoint=config.azure_endpoint, **auth)
    else:
        chat_client = client_class(
            config.model, api_key=config.api_key or NO_KEY, base_url=config.base_url or None
        )

    async def close() -> None:
        await chat_client.client.close()
        if credential is not None:
            await credential.close()

    return chat_client, close


def build_agent(config: ModelConfig) -> tuple[Agent, Close]:
    options: dict[str, Any] = {}
    if config.temperature is not None:
        options["temperature"] = config.temperature
    if config.api == "responses":
        options["store"] = False
    chat_client, close = build_chat_client(config)
    agent = Agent(
        chat_client,
        instructions=config.instructions or None,
        name=f"afhost-{config.preset}",
        description=f"{config.model} ({config.preset}, {config.api})",
        default_options=options,  # type: ignore[arg-type]
    )
    return agent, close


async def _close_with_loop(close: Close) -> AsyncIterator[None]:
    """Waits at its `yield` while its event loop runs. A loop that ends with
    `shutdown_asyncgens()` (asyncio.run and asgiref's async_to_sync do, before closing it) closes
    it, which closes the connections of the loop's agent while the loop can still run that."""
    try:
        yield
    finally:
        await close()


async def _start(generator: AsyncIterator[None]) -> None:
    await anext(generator)


@dataclass(frozen=True)
class ServiceProblem:
    """What the start-up probe found wrong with the model service: a system check warning."""

    id: str
    message: str
    hint: str


class ModelAgent:
    """The hosted model as an agent (`SupportsAgentRun`): one Agent per event loop."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.id = self.name = f"afhost-{config.preset}"
        self.description = f"{config.model} ({config.preset}, {config.api})"
        # Each loop's agent, with the async generator that closes its connections (kept here:
        # the loop holds its async generators weakly).
        self._agents: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Agent, AsyncIterator[None]]
        ] = weakref.WeakKeyDictionary()
        self._probed: tuple[ServiceProblem | None] | None = None
        build_agent(config)  # a configuration agent-framework-openai refuses fails here, at load

    def run(self, messages: Any = None, *, stream: bool = False, **kwargs: Any) -> Any:
        if stream:
            return self._agent().run(messages, stream=True, **kwargs)
        return self._complete(messages, **kwargs)

    async def _complete(self, messages: Any, **kwargs: Any) -> AgentResponse:
        # The agent is chosen once awaited: on the loop that awaits it.
        return await self._agent().run(messages, **kwargs)

    def create_session(self, *, session_id: str | None = None) -> AgentSession:
        return AgentSession(session_id=session_id)

    def get_session(
        self, service_session_id: Any, *, session_id: str | None = None
    ) -> AgentSession:
        return AgentSession(service_session_id=service_session_id, session_id=session_id)

    def _agent(self) -> Agent:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return build_agent(self.config)[0]
        if (known := self._agents.get(loop)) is not None:
            return known[0]
        agent, close = build_agent(self.config)
        closer = _close_with_loop(close)
        loop.create_task(_start(closer))
        self._agents[loop] = (agent, closer)
        return agent

    def probe(self) -> ServiceProblem | None:
        """Ask the model service for its models, once per process; what is wrong, if anything."""
        if self._probed is None:
            self._probed = (probe_model_service(self.config),)
        return self._probed[0]


def load_model_target(preset: str) -> ModelAgent:
    config = model_config(preset)
    try:
        return ModelAgent(config)
    except TargetLoadError:
        raise
    except Exception as exc:  # agent-framework-openai's SettingNotFoundError, ValueError...
        raise TargetLoadError(f"AFHOST_TARGET={preset}: {exc}") from exc


# --- The start-up probe ------------------------------------------------------------------------


def probe_model_service(config: ModelConfig) -> ServiceProblem | None:
    """GET /models on the configured service, in a thread and event loop of its own, giving up
    after PROBE_SECONDS. Never raises: a failure is the problem it reports."""
    timeout = PROBE_SECONDS
    url = config.base_url or config.azure_endpoint or "https://api.openai.com/v1"

    async def list_models() -> list[str]:
        nonlocal url
        chat_client, close = build_chat_client(config)
        client = chat_client.client.with_options(timeout=timeout, max_retries=0)  # type: ignore[attr-defined]
        url = str(client.base_url).rstrip("/")
        try:
            async with asyncio.timeout(timeout):
                page = await client.models.list()
            return [model.id for model in page.data]
        finally:
            await close()

    try:
        with ThreadPoolExecutor(1, thread_name_prefix="afhost-model-probe") as pool:
            models = pool.submit(asyncio.run, list_models()).result()
    except Exception as exc:
        return _probe_failure(config, url, exc, timeout)
    if config.preset != "azure-openai" and not {config.model, f"{config.model}:latest"} & set(
        models
    ):
        listed = ", ".join(sorted(models)[:10]) + (", ..." if len(models) > 10 else "")
        return ServiceProblem(
            "afhost.W012",
            f"The model service at {url} does not offer the model {config.model!r} "
            f"(it lists: {listed or 'none'}).",
            "Check AFHOST_MODEL: every turn will fail with 404 until it names a model the "
            "service has.",
        )
    return None


def _probe_failure(config: ModelConfig, url: str, exc: Exception, timeout: float) -> ServiceProblem:
    import openai

    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        hint = f"Check {config.key_setting}."
        if config.preset == "azure-openai" and not config.api_key:
            hint = "Check that the Entra ID identity has a Cognitive Services OpenAI User role."
        return ServiceProblem(
            "afhost.W010",
            f"The model service at {url} refused the credentials (HTTP {exc.status_code}).",
            hint + " Every turn fails until it accepts them.",
        )
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        reason = f"no answer within {timeout:g} s"
    elif isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        reason = f"{type(cause).__name__}: {cause}" if cause else str(exc)
    else:
        reason = ""
    if reason:
        return ServiceProblem(
            "afhost.W011",
            f"The model service at {url} could not be reached ({reason}).",
            f"Check {config.url_setting}, and that the service is up and reachable from here: "
            "turns fail until it answers.",
        )
    if isinstance(exc, openai.APIStatusError):
        message = f"The model service at {url} answered HTTP {exc.status_code} to GET /models."
    else:
        message = f"Probing the model service at {url} failed: {type(exc).__name__}: {exc}"
    return ServiceProblem(
        "afhost.W013",
        message,
        f"Check {config.url_setting}. (A server without GET /models may still answer turns.)",
    )


# --- What a caller is told ---------------------------------------------------------------------


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        inner = getattr(current, "inner_exception", None)
        current = (
            inner if isinstance(inner, BaseException) else current.__cause__ or current.__context__
        )


def explain_model_failure(exc: BaseException) -> tuple[str, str] | None:
    """An OpenAI-style error code and a message for the caller, when a model service's failure
    is behind `exc` (from any target built on the openai SDK); None otherwise.

    The message is ours, never the provider's (which may quote the request or part of the key).
    """
    openai = sys.modules.get("openai")
    if openai is None:  # nothing has used the SDK, so it cannot have failed
        return None
    for error in _causes(exc):
        if isinstance(error, openai.APITimeoutError):
            return "server_error", "The model service did not answer in time."
        if isinstance(error, openai.APIConnectionError):
            return "server_error", "The model service could not be reached."
        if isinstance(error, openai.RateLimitError):
            return (
                "rate_limit_exceeded",
                "The model service is rate limiting requests (HTTP 429); try again later.",
            )
        if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
            return (
                "server_error",
                f"The model service refused the host's credentials (HTTP {error.status_code}).",
            )
        if isinstance(error, openai.NotFoundError):
            return (
                "server_error",
                "The model service does not know the configured model (HTTP 404).",
            )
        if isinstance(error, openai.APIStatusError):
            code = error.code if isinstance(error.code, str) else ""
            return (
                "server_error",
                f"The model service answered HTTP {error.status_code}"
                + (f" ({code})." if code else "."),
            )
    return None
