"""First run and production: `make run` in a fresh checkout, the home page, the model list,
static files with DEBUG off, and the deploy check with the README's production settings."""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from django.core.management import call_command
from django.test import Client
from openai import OpenAI

from tests.conftest import ROOT, _free_port

BANNER_FIELD = re.compile(r"^  (Site|Admin|Responses API|API key|Agent|Telegram)\s{2,}(\S+)")


def _fresh_checkout(destination: Path) -> Path:
    """The tree a fresh clone of this working tree has (what CI clones, with changes not yet
    committed): the tracked and unignored files, and none of a developer's databases, keys or
    collected static files. The venv is this one, linked (installing one takes minutes)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # not a file deleted but not yet committed
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    (destination / ".venv").symlink_to(Path(sys.prefix))
    (destination / ".venv" / "installed").touch()  # newer than the copied requirements
    return destination


class Output:
    """A process's output, read in a thread as it comes."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_end(self, timeout: float) -> None:
        """Until every process writing it has closed it."""
        self._thread.join(timeout)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for_banner(self, process: subprocess.Popen, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            lines = list(self.lines)
            starts = [i for i, line in enumerate(lines) if "afhost is ready at" in line]
            if starts:
                rules = [i for i in range(starts[0], len(lines)) if set(lines[i]) == {"="}]
                if rules:
                    return lines[starts[0] - 1 : rules[0] + 1]
            time.sleep(0.1)
        pytest.fail(f"make run printed no banner:\n{self.text}")


@pytest.fixture
def make_run(tmp_path):
    """`make run` in a fresh checkout, in a session of its own, with a newcomer's environment
    (no DATABASE_URL: the SQLite file; no Telegram token); stopped with Ctrl-C's SIGINT."""
    checkout = _fresh_checkout(tmp_path / "afhost")
    port = _free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",  # lines come as in a terminal, in order
    }
    process = subprocess.Popen(
        ["make", "run", f"PORT={port}"],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = Output(process)
    try:
        yield process, output, checkout
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _group_ended(process: subprocess.Popen, timeout: float) -> bool:
    """Whether `process` and every process it started ended within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.poll()  # reaped: a zombie still counts as the group's
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_make_run_in_a_fresh_checkout_prints_a_banner_whose_urls_and_key_work(make_run):
    # given
    process, output, checkout = make_run

    # when
    banner = output.wait_for_banner(process, timeout=60)
    started = output.text

    # then: the banner says where everything is, and it all answers
    fields = dict(m.groups() for line in banner if (m := BANNER_FIELD.match(line)))
    site, key = fields["Site"], fields["API key"]
    assert fields["Agent"] == "afhost-demo"
    assert fields["Telegram"] == "off"
    assert (checkout / ".dev-api-key").read_text().strip() == key
    home = httpx.get(site)
    assert home.status_code == 200
    assert "afhost-demo" in home.text
    assert httpx.get(fields["Admin"], follow_redirects=True).status_code == 200
    assert fields["Responses API"] == f"{site}v1/responses"
    client = OpenAI(
        base_url=f"{site}v1", api_key=key, max_retries=0, _strict_response_validation=True
    )
    assert "Hello there" in client.responses.create(model="demo", input="Hello there").output_text
    job = client.responses.create(model="demo", input="Later", background=True)
    deadline = time.monotonic() + 20
    while (job := client.responses.retrieve(job.id)).status != "completed":  # the worker
        assert time.monotonic() < deadline, job.status
        time.sleep(0.2)
    assert [model.id for model in client.models.list()] == ["afhost-demo"]
    assert httpx.get(f"{site}no-such-page").status_code == 404

    # and: a normal start warns of nothing, and each request is logged once
    assert re.search(r"warning|error|traceback", started, re.IGNORECASE) is None, started
    time.sleep(0.3)
    log = output.text
    assert len(re.findall(r"HTTP GET / 200", log)) == 1
    assert len(re.findall(r"/no-such-page", log)) == 1

    # when: Ctrl-C
    os.killpg(process.pid, signal.SIGINT)

    # then: everything it started stops, and make reports no error
    assert _group_ended(process, timeout=20), output.text
    output.wait_for_end(timeout=5)
    assert "make: ***" not in output.text
    assert "has stopped." in output.text  # the worker stopped cleanly


def test_the_banner_says_how_telegram_reaches_the_bot(db, settings, tmp_path):
    # given
    settings.DEBUG = True
    settings.BASE_DIR = tmp_path
    settings.AFHOST_PUBLIC_URL = "https://agent.example.com"
    out = io.StringIO()

    # when
    call_command("ready_banner", "--wait", "0", "--url", "http://127.0.0.1:8123", stdout=out)
    settings.TELEGRAM_MODE = "polling"
    polling = io.StringIO()
    call_command("ready_banner", "--wait", "0", stdout=polling)

    # then
    banner = out.getvalue()
    assert "afhost is ready at http://127.0.0.1:8123/" in banner
    assert "webhook at https://agent.example.com/telegram/webhook/" in banner
    assert "Agent             scripted  (AFHOST_TARGET=tests.agents:agent)" in banner
    key = (tmp_path / ".dev-api-key").read_text().strip()
    assert f"API key           {key}" in banner
    assert "Telegram          polling" in polling.getvalue()


def test_the_home_page_says_what_is_hosted_and_where(db):
    # when
    response = Client().get("/")

    # then
    assert response.status_code == 200
    page = response.content.decode()
    assert "<strong>scripted</strong>" in page
    assert "AFHOST_TARGET=tests.agents:agent" in page
    assert "http://testserver/v1/responses" in page
    assert "http://127.0.0.1:8000/telegram/webhook/" in page  # AFHOST_PUBLIC_URL's
    assert 'href="/admin/"' in page


def test_the_admin_is_afhost_administration_and_views_the_home_page(admin_client):
    # when
    page = admin_client.get("/admin/").content.decode()

    # then
    assert "afhost administration" in page
    assert '<a href="/">View site</a>' in page


def test_browsers_asking_for_an_icon_get_no_404(db):
    assert Client().get("/favicon.ico").status_code == 204


def test_the_models_are_the_hosted_agent_as_openai_lists_them(
    openai_client_factory, raw_api_key, live_server_url
):
    # given
    client = openai_client_factory(raw_api_key)

    # when
    models = client.models.list()

    # then
    assert [(m.id, m.object, m.owned_by) for m in models] == [("scripted", "model", "afhost")]
    assert client.models.retrieve("scripted").id == "scripted"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai_client_factory("afh_wrong").models.list()
    foundry = httpx.get(
        f"{live_server_url}/models", headers={"Authorization": f"Bearer {raw_api_key}"}
    )
    assert foundry.json()["data"][0]["id"] == "scripted"


def test_static_files_are_served_with_debug_off(live_server_factory, tmp_path):
    # given: collectstatic, as the production steps run it
    static_root = tmp_path / "static"
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env={**os.environ, "STATIC_ROOT": str(static_root)},
        check=True,
    )
    url = live_server_factory("uvicorn", DEBUG="false", STATIC_ROOT=str(static_root))

    # when
    login = httpx.get(f"{url}/admin/login/")
    css = httpx.get(f"{url}/static/admin/css/base.css", headers={"Accept-Encoding": "gzip"})
    head = httpx.head(f"{url}/static/admin/css/base.css")
    again = httpx.get(
        f"{url}/static/admin/css/base.css", headers={"If-None-Match": css.headers["ETag"]}
    )

    # then
    assert 'href="/static/admin/css/base.css"' in login.text
    assert css.status_code == 200
    assert css.headers["Content-Type"].startswith("text/css")
    assert css.headers["Content-Encoding"] == "gzip"
    assert css.content == (static_root / "admin/css/base.css").read_bytes()
    assert (head.status_code, head.content) == (200, b"")
    assert again.status_code == 304
    assert httpx.get(f"{url}/static/admin/css/nothing.css").status_code == 404
    assert "synchronous iterators" not in (tmp_path / "uvicorn-0.log").read_text()


def _documented_production_env(secret_key_file: Path) -> dict[str, str]:
    """deploy/afhost.env, the settings the README's production steps install, with its secret
    key file here."""
    lines = (ROOT / "deploy" / "afhost.env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    secret_key_file.write_text(secrets.token_urlsafe(50))
    return {**env, "SECRET_KEY_FILE": str(secret_key_file)}


def _deploy_check(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "afhost.settings", **env},
        capture_output=True,
        text=True,
    )


def test_the_deploy_check_is_clean_with_the_documented_production_settings(tmp_path):
    # given
    production = _documented_production_env(tmp_path / "secret_key")

    # when
    documented = _deploy_check(**production)
    plain_http = _deploy_check(**{**production, "AFHOST_HTTPS": "false"})

    # then
    assert documented.returncode == 0, documented.stderr
    assert documented.stdout == "System check identified no issues (0 silenced).\n"
    assert plain_http.returncode != 0
    for warning in ("W004", "W008", "W012", "W016"):
        assert f"security.{warning}" in plain_http.stderr


def test_https_redirects_everything_but_the_readiness_probes(db, settings):
    # given
    settings.SECURE_SSL_REDIRECT = True
    client = Client()

    # when
    home = client.get("/")
    probe = client.get("/readyz")

    # then
    assert (home.status_code, home["Location"]) == (301, "https://testserver/")
    assert probe.status_code == 200
