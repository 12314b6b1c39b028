import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from afhost import checks
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


def _python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    environment.update(env, DJANGO_SETTINGS_MODULE="afhost.settings")
    return subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True
    )


def _import_settings(**env):
    return _python("import afhost.settings as s; print(s.SECRET_KEY)", **env)


def test_there_is_no_secret_key_default_without_debug():
    # when
    server = _python("import afhost.asgi", DEBUG="false")
    use = _python(
        "import django; django.setup(); from django.core import signing; signing.dumps(1)",
        DEBUG="false",
    )

    # then
    assert server.returncode != 0
    assert "SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is off" in server.stderr
    assert use.returncode != 0
    assert "The SECRET_KEY setting must not be empty" in use.stderr


def test_the_deploy_check_reports_a_missing_secret_key():
    result = _python(
        "from django.core.management import execute_from_command_line as run; run(['m', 'check', '--deploy'])",
        DEBUG="false",
    )
    assert result.returncode != 0
    assert "afhost.E002" in result.stderr


def test_debug_processes_share_one_development_secret_key():
    # when
    keys = [_import_settings(DEBUG="true") for _ in range(2)]

    # then
    assert [result.returncode for result in keys] == [0, 0]
    assert keys[0].stdout == keys[1].stdout
    assert len(keys[0].stdout.strip()) > 40


def test_a_sqlite_too_old_for_returning_is_reported(monkeypatch):
    # given
    monkeypatch.setitem(settings.DATABASES["default"], "ENGINE", "django.db.backends.sqlite3")
    monkeypatch.setattr(checks.sqlite3, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(checks.sqlite3, "sqlite_version", "3.34.1")

    # when
    errors = checks.check_sqlite_version(None)

    # then
    assert [error.id for error in errors] == ["afhost.E003"]
    assert "SQLite 3.34.1 is too old" in errors[0].msg


@pytest.mark.parametrize("engine", ["django.db.backends.sqlite3", "django.db.backends.postgresql"])
def test_a_current_sqlite_or_postgresql_passes_the_check(monkeypatch, engine):
    monkeypatch.setitem(settings.DATABASES["default"], "ENGINE", engine)

    assert checks.check_sqlite_version(None) == []


def test_the_server_freezes_what_start_up_built_and_collects_young_objects_less_often():
    # when
    server = _python(
        "import gc; import afhost.asgi; from afhost.demo import agent; "
        "print(any(o is agent for o in gc.get_objects()), gc.get_threshold()[0])",
        DEBUG="false",
        SECRET_KEY="test",
    )

    # then: the target, loaded at start-up, is no longer walked by the collector
    assert server.returncode == 0, server.stderr
    assert server.stdout.split() == ["False", "7000"]
