import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from afhost.env import env_bool, env_int, env_list, env_secret


def test_env_bool_reads_booleans_and_rejects_anything_else(monkeypatch):
    monkeypatch.setenv("FLAG", "yes")
    assert env_bool("FLAG") is True
    monkeypatch.setenv("FLAG", "off")
    assert env_bool("FLAG") is False
    monkeypatch.setenv("FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="FLAG must be a boolean"):
        env_bool("FLAG")


def test_env_int_and_env_list(monkeypatch):
    monkeypatch.setenv("COUNT", "x")
    with pytest.raises(ImproperlyConfigured, match="COUNT must be an integer"):
        env_int("COUNT", 1)
    monkeypatch.setenv("COUNT", "0")
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        env_int("COUNT", 1, minimum=1)
    monkeypatch.setenv("HOSTS", "a.example.com, b.example.com,")
    assert env_list("HOSTS") == ["a.example.com", "b.example.com"]


def test_env_secret_prefers_a_readable_file(monkeypatch, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    monkeypatch.setenv("TOKEN", "from-env")
    monkeypatch.setenv("TOKEN_FILE", str(secret))
    assert env_secret("TOKEN") == "from-file"
    monkeypatch.setenv("TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="not readable"):
        env_secret("TOKEN")


def _import_settings(**env):
    environment = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import afhost.settings as s; print(s.SECRET_KEY)"],
        env=environment,
        capture_output=True,
        text=True,
    )


def test_there_is_no_secret_key_default_without_debug():
    result = _import_settings(DEBUG="false")
    assert result.returncode != 0
    assert "SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is off" in result.stderr


def test_debug_processes_share_one_development_secret_key():
    # when
    keys = [_import_settings(DEBUG="true") for _ in range(2)]

    # then
    assert [result.returncode for result in keys] == [0, 0]
    assert keys[0].stdout == keys[1].stdout
    assert len(keys[0].stdout.strip()) > 40
