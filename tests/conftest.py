"""Shared fixtures: factories for rows, and a live ASGI server plus a django-q2 cluster in
subprocesses, both pointed at the test database."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import httpx
import pytest
from django.conf import settings
from django.db import connections
from django.test import Client
from django.urls import reverse
from django.utils.module_loading import import_string
from django_q.models import OrmQ
from openai import AsyncOpenAI, OpenAI

from afhost.leases import keeper
from afhost.models import ApiKey, Run
from afhost.services import create_api_key
from channels_app.telegram.models import TelegramChat, TelegramUpdate
from channels_app.telegram.services import sweep_updates
from tests.fakes.oidc import CLIENT_ID, CLIENT_SECRET, FakeEntra
from tests.fakes.telegram_api import FakeTelegramApi

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def _close_connection_pools(django_db_setup, django_db_blocker) -> Iterator[None]:
    """Hand back pooled connections before the test database is dropped."""
    yield
    with django_db_blocker.unblock():
        for connection in connections.all():
            if connection.vendor == "postgresql" and connection.settings_dict["OPTIONS"].get(
                "pool"
            ):
                connection.close_pool()


@pytest.fixture(autouse=True)
def _forget_leases() -> Iterator[None]:
    """Leases a test took on rows its transaction rolls back are not renewed in later tests (nor
    after the test database is dropped); forgotten before each test too, should work an earlier
    test started take one after that test ended."""

    def forget_all() -> None:
        for (model, pk), owner in keeper.held().items():
            keeper.forget(model, pk, owner)

    forget_all()
    yield
    forget_all()


@pytest.fixture
def on_redis(settings) -> None:
    """Settings as with AFHOST_REDIS_URL (to a port nobody listens on): django-q2's queue is not
    a table of the database."""
    settings.Q_CLUSTER = {
        **{name: value for name, value in settings.Q_CLUSTER.items() if name != "orm"},
        "redis": {"host": "127.0.0.1", "port": 1},
    }


@pytest.fixture(scope="session")
def fake_telegram() -> Iterator[FakeTelegramApi]:
    """A fake Telegram Bot API on loopback, shared by this process and the subprocesses."""
    with FakeTelegramApi(settings.TELEGRAM_BOT_TOKEN, bot_username="test_bot") as fake:
        yield fake


@pytest.fixture
def telegram_api(fake_telegram, settings) -> FakeTelegramApi:
    """The fake Bot API, emptied, with this process's bot pointed at it."""
    fake_telegram.reset()
    settings.TELEGRAM_API_BASE_URL = f"{fake_telegram.url}/bot"
    settings.TELEGRAM_API_FILE_URL = f"{fake_telegram.url}/file/bot"
    return fake_telegram


def _child_env(fake: FakeTelegramApi) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "afhost.settings_test",
        "AFHOST_TEST_DATABASE_NAME": str(settings.DATABASES["default"]["NAME"]),
        "TELEGRAM_API_BASE_URL": f"{fake.url}/bot",
        "TELEGRAM_API_FILE_URL": f"{fake.url}/file/bot",
        "LOG_LEVEL": "INFO",
    }


def _stop(process: subprocess.Popen) -> None:
    """Stop a server started in its own session, with every process it forked."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    with contextlib.suppress(ProcessLookupError):  # stragglers of a cluster that stopped uncleanly
        os.killpg(process.pid, signal.SIGKILL)


SERVERS = {
    "daphne": ["daphne", "-b", "127.0.0.1", "-p", "{port}", "afhost.asgi:application"],
    "uvicorn": [
        "uvicorn",
        "afhost.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--no-access-log",
    ],
}


@contextlib.contextmanager
def _serve(env: dict[str, str], log: Path, server: str = "daphne") -> Iterator[str]:
    """afhost served by daphne (or uvicorn) in a subprocess of its own session; its URL."""
    port = _free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", *(arg.format(port=port) for arg in SERVERS[server])],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                _stop(process)
                raise RuntimeError(f"{server} did not start:\n{log.read_text()}") from None
            time.sleep(0.1)
    try:
        yield url
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def live_server_url(django_db_setup, fake_telegram, tmp_path_factory) -> Iterator[str]:
    """afhost served by daphne in a subprocess, as in production."""
    log = tmp_path_factory.mktemp("daphne") / "daphne.log"
    with _serve(_child_env(fake_telegram), log) as url:
        yield url


@pytest.fixture
def live_server_factory(django_db_setup, fake_telegram, tmp_path) -> Iterator[Callable[..., str]]:
    """Start live servers of the test's own (daphne, or uvicorn as in production), with
    settings of their own; their URLs."""
    numbers = itertools.count()
    with contextlib.ExitStack() as servers:

        def make(server: str = "daphne", **env: str) -> str:
            log = tmp_path / f"{server}-{next(numbers)}.log"
            return servers.enter_context(_serve({**_child_env(fake_telegram), **env}, log, server))

        yield make


class Cluster:
    """A worker (`manage.py worker`: a django-q2 cluster) in a subprocess of its own session."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def _started(self) -> int:
        return sum("Q Cluster" in line and "running" in line for line in self.log.open())

    def start(self) -> Cluster:
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "worker"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while self._started() <= self.starts:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        self.starts += 1
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.running:
            _stop(self.process)
        self.process = None

    def kill(self) -> None:
        """SIGKILL to every process of the cluster, as when its machine dies."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def shared_cluster(django_db_setup, fake_telegram, tmp_path_factory) -> Iterator[Cluster]:
    cluster = Cluster(
        _child_env(fake_telegram), tmp_path_factory.mktemp("qcluster") / "qcluster.log"
    )
    yield cluster
    cluster.stop()


@pytest.fixture
def worker(shared_cluster) -> Path:
    """The shared django-q2 cluster, running; its log file."""
    if not shared_cluster.running:
        shared_cluster.start()
    return shared_cluster.log


@pytest.fixture
def cluster_factory(shared_cluster, fake_telegram, tmp_path) -> Iterator[Callable[..., Cluster]]:
    """Start clusters of the test's own, with settings of its own (the shared one is stopped
    meanwhile, so that the test's clusters alone take its tasks)."""
    shared_cluster.stop()
    made: list[Cluster] = []

    def make(**env: str) -> Cluster:
        cluster = Cluster(
            {**_child_env(fake_telegram), **env}, tmp_path / f"qcluster-{len(made)}.log"
        )
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture(scope="session")
def fake_entra() -> Iterator[FakeEntra]:
    with FakeEntra() as fake:
        yield fake


def entra_env(fake: FakeEntra) -> dict[str, str]:
    """The environment that points afhost's linking at the fake Entra ID."""
    return {
        "ENTRA_TENANT_ID": fake.tenant,
        "ENTRA_CLIENT_ID": CLIENT_ID,
        "ENTRA_CLIENT_SECRET": CLIENT_SECRET,
        "ENTRA_AUTHORITY": fake.url,
    }


@pytest.fixture
def entra(fake_entra, settings) -> FakeEntra:
    """Linking on, against the fake Entra ID (in this process's settings)."""
    base, prefix = f"{fake_entra.url}/{fake_entra.tenant}", "SOCIAL_AUTH_AZUREAD_V2_TENANT_OAUTH2_"
    for name, value in entra_env(fake_entra).items():
        setattr(settings, name, value)
    for name, value in {
        "KEY": CLIENT_ID,
        "SECRET": CLIENT_SECRET,
        "TENANT_ID": fake_entra.tenant,
        "AUTHORIZATION_URL": f"{base}/oauth2/v2.0/authorize",
        "ACCESS_TOKEN_URL": f"{base}/oauth2/v2.0/token",
        "OPENID_CONFIGURATION_URL": f"{base}/v2.0/.well-known/openid-configuration",
        "JWKS_URI": f"{base}/discovery/v2.0/keys",
    }.items():
        setattr(settings, prefix + name, value)
    fake_entra.people.clear()
    fake_entra.overrides.clear()
    return fake_entra


@pytest.fixture
def api_key_factory(db) -> Callable[..., tuple[ApiKey, str]]:
    def make(
        name: str = "test client", *, is_trusted: bool = False, partition: str = ""
    ) -> tuple[ApiKey, str]:
        return create_api_key(name=name, is_trusted=is_trusted, partition=partition)

    return make


@pytest.fixture
def live_db(transactional_db) -> Iterator[None]:
    """Committed data the live server and the worker can see; they stop using it before the
    test database is flushed.

    A worker still writing to several tables while the flush truncates them all can deadlock
    with it (seen on PostgreSQL). So active runs are cancelled (a running one stops within
    AFHOST_POLL_INTERVAL), pending updates and queued tasks dropped, and chats being answered
    finish first.
    """
    yield
    running = Run.objects.filter(status=Run.Status.IN_PROGRESS, is_background=True).exists()
    Run.objects.filter(status__in=Run.ACTIVE_STATUSES).update(status=Run.Status.CANCELLED)
    TelegramUpdate.objects.filter(status=TelegramUpdate.Status.PENDING).update(
        status=TelegramUpdate.Status.IGNORED
    )
    OrmQ.objects.all().delete()
    deadline = time.monotonic() + 10
    while TelegramChat.objects.filter(lease_owner__gt="").exists():
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if running:  # give it time to see the cancel and stop writing
        time.sleep(0.5)


@pytest.fixture
def raw_api_key(live_db, api_key_factory) -> str:
    return api_key_factory()[1]


def sdk_client(url: str, api_key: str, **headers: str) -> OpenAI:
    """The official openai SDK against the server at `url`, strict about every payload."""
    return OpenAI(
        base_url=f"{url}/v1",
        api_key=api_key,
        max_retries=0,
        timeout=30,
        default_headers=headers or None,
        _strict_response_validation=True,
    )


@pytest.fixture
def openai_client_factory(live_server_url) -> Callable[..., OpenAI]:
    def make(api_key: str, **headers: str) -> OpenAI:
        return sdk_client(live_server_url, api_key, **headers)

    return make


@pytest.fixture
def client(openai_client_factory, raw_api_key) -> OpenAI:
    """The official openai SDK, strict about every payload, against the live server."""
    return openai_client_factory(raw_api_key)


@pytest.fixture
def async_client(live_server_url, raw_api_key) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=f"{live_server_url}/v1",
        api_key=raw_api_key,
        max_retries=0,
        timeout=30,
        _strict_response_validation=True,
    )


FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def telegram_update() -> Callable[..., dict]:
    """Load tests/fixtures/telegram/<name>.json, optionally with another update_id or text."""
    counter = iter(range(1, 1_000_000))

    def load(
        name: str, *, update_id: int | None = None, text: str | None = None, **message_fields
    ) -> dict:
        payload = json.loads((FIXTURES / "telegram" / f"{name}.json").read_text())
        payload["update_id"] = update_id or payload["update_id"] + next(counter) * 1000
        message = payload.get("message")
        if message is not None:
            if text is not None:
                message["text"] = text
                message.pop("entities", None)
            message.update(message_fields)
        return payload

    return load


@dataclass
class TelegramInbox:
    """Posts updates to the real webhook view and runs the queued chat tasks in this process."""

    client: Client
    capture_on_commit: Callable
    queued: list[tuple[str, tuple]]

    def post(self, payload: dict | bytes, *, secret: str | None = "test-webhook-secret"):
        headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
        body = payload if isinstance(payload, bytes) else json.dumps(payload)
        with self.capture_on_commit(execute=True):
            return self.client.post(
                reverse("channels_app:telegram_webhook"),
                body,
                content_type="application/json",
                headers=headers,
            )

    def process(self) -> None:
        """Run the tasks queued meanwhile (chats, link confirmations), as a worker would."""
        while self.queued:
            func, args = self.queued.pop(0)
            import_string(func)(*args)

    def sweep(self) -> int:
        with self.capture_on_commit(execute=True):
            return sweep_updates()

    def deliver(self, *payloads: dict) -> None:
        for payload in payloads:
            assert self.post(payload).status_code == 200
        self.process()


@pytest.fixture
def telegram_inbox(db, telegram_api, django_capture_on_commit_callbacks) -> Iterator[TelegramInbox]:
    inbox = TelegramInbox(
        client=Client(), capture_on_commit=django_capture_on_commit_callbacks, queued=[]
    )

    def enqueue(func, *args, **options):
        inbox.queued.append((func, args))

    with (
        mock.patch("channels_app.telegram.services.async_task", side_effect=enqueue),
        mock.patch("channels_app.telegram.processing.TYPING_EVERY", 0.05),
        mock.patch("channels_app.telegram.processing.SEND_BACKOFF", 0.01),
    ):
        yield inbox


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator:
    """Debian's headless Chromium, driven by Playwright, for the tests of one module.

    Skipped when Chromium is missing, unless AFHOST_REQUIRE_BROWSER=1 (CI). Playwright's sync
    API keeps an event loop running in this thread until it stops, so Django refuses ORM calls
    meanwhile unless DJANGO_ALLOW_ASYNC_UNSAFE is set: set for exactly that long.
    Module-scoped, so that the tests of later modules run with neither.
    """
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        reason = f"browser tests need {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("AFHOST_REQUIRE_BROWSER") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium) -> Iterator:
    """A fresh browser context and page; Playwright waits at most 10 s for anything."""
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()
