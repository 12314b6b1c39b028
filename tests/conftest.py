"""Shared fixtures: factories for rows, and a live ASGI server plus a django-q2 cluster in
subprocesses, both pointed at the test database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from openai import AsyncOpenAI, OpenAI

from afhost.models import ApiKey
from afhost.services import create_api_key

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env() -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "afhost.settings_test",
        "AFHOST_TEST_DATABASE_NAME": str(settings.DATABASES["default"]["NAME"]),
        "LOG_LEVEL": "INFO",
    }


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def live_server_url(django_db_setup, tmp_path_factory) -> Iterator[str]:
    """afhost served by daphne in a subprocess, as in production."""
    port = _free_port()
    log = tmp_path_factory.mktemp("daphne") / "daphne.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "afhost.asgi:application",
            ],
            cwd=ROOT,
            env=_child_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not start:\n{log.read_text()}") from None
            time.sleep(0.1)
    yield url
    _stop(process)


@pytest.fixture(scope="session")
def worker(django_db_setup, tmp_path_factory) -> Iterator[Path]:
    """A django-q2 cluster (`manage.py qcluster`) in a subprocess; yields its log file."""
    log = tmp_path_factory.mktemp("qcluster") / "qcluster.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=_child_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while "running" not in log.read_text().lower():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"qcluster did not start:\n{log.read_text()}")
        time.sleep(0.1)
    yield log
    _stop(process)


@pytest.fixture
def api_key_factory(db) -> Callable[..., tuple[ApiKey, str]]:
    def make(name: str = "test client", *, is_trusted: bool = False) -> tuple[ApiKey, str]:
        return create_api_key(name=name, is_trusted=is_trusted)

    return make


@pytest.fixture
def raw_api_key(transactional_db, api_key_factory) -> str:
    # transactional_db: the live server reads the key from another process, so it must be committed.
    return api_key_factory()[1]


@pytest.fixture
def openai_client_factory(live_server_url) -> Callable[..., OpenAI]:
    def make(api_key: str, **headers: str) -> OpenAI:
        return OpenAI(
            base_url=f"{live_server_url}/v1",
            api_key=api_key,
            max_retries=0,
            timeout=30,
            default_headers=headers or None,
            _strict_response_validation=True,
        )

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
