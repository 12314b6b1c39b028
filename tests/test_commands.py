import io
import pkgutil
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django_q.models import Schedule

from afhost.models import ApiKey


def test_create_api_key_prints_the_key_alone_on_the_last_line(db):
    # given
    out, err = io.StringIO(), io.StringIO()

    # when
    call_command("create_api_key", "billing-backend", "--trusted", stdout=out, stderr=err)

    # then
    raw_key = out.getvalue().strip().splitlines()[-1]
    api_key = ApiKey.objects.get()
    assert ApiKey.objects.for_raw_key(raw_key) == api_key
    assert api_key.name == "billing-backend"
    assert api_key.is_trusted is True
    assert raw_key not in api_key.key_hash
    assert "trusted API key 'billing-backend'" in err.getvalue()


def test_create_api_key_puts_the_key_into_a_named_partition(db):
    # given
    err = io.StringIO()

    # when
    call_command(
        "create_api_key",
        "acme-backend",
        "--trusted",
        "--partition",
        "acme",
        stdout=io.StringIO(),
        stderr=err,
    )

    # then
    api_key = ApiKey.objects.get()
    assert api_key.partition == "acme"
    assert "in partition 'acme'" in err.getvalue()


@pytest.mark.parametrize("partition", ["acme:user.bob", "key.1", "x" * 33])
def test_create_api_key_refuses_an_invalid_partition(db, partition):
    # when
    with pytest.raises(CommandError) as error:
        call_command("create_api_key", "backend", "--partition", partition, stdout=io.StringIO())

    # then
    assert "partition" in str(error.value)
    assert not ApiKey.objects.exists()


def test_ensure_dev_api_key_creates_once_and_then_reuses_the_key(db, settings, tmp_path):
    # given
    settings.DEBUG = True
    key_file = tmp_path / ".dev-api-key"

    # when
    first, second = io.StringIO(), io.StringIO()
    call_command("ensure_dev_api_key", file=str(key_file), stdout=first)
    call_command("ensure_dev_api_key", file=str(key_file), stdout=second)

    # then
    assert first.getvalue() == second.getvalue()
    assert ApiKey.objects.count() == 1
    assert key_file.read_text().strip() == first.getvalue().strip()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_ensure_dev_api_key_replaces_a_revoked_key(db, settings, tmp_path):
    # given
    settings.DEBUG = True
    key_file = tmp_path / ".dev-api-key"
    call_command("ensure_dev_api_key", file=str(key_file), stdout=io.StringIO())
    ApiKey.objects.get().revoke()

    # when
    call_command("ensure_dev_api_key", file=str(key_file), stdout=io.StringIO())

    # then
    assert ApiKey.objects.active().count() == 1
    assert ApiKey.objects.for_raw_key(key_file.read_text().strip()) is not None


def test_ensure_dev_api_key_refuses_to_run_without_debug(db, settings, tmp_path):
    settings.DEBUG = False
    with pytest.raises(CommandError):
        call_command("ensure_dev_api_key", file=str(tmp_path / "k"))
    assert ApiKey.objects.exists() is False


def test_every_custom_management_command_has_a_test():
    root = Path(__file__).resolve().parent.parent
    tests = "".join(
        path.read_text() for path in root.glob("**/tests/**/*.py") if ".venv" not in path.parts
    )
    tests += "".join(path.read_text() for path in (root / "tests").glob("*.py"))
    commands = [
        module.name
        for app in ("afhost", "linking", "delivery", "channels_app")
        if (root / app / "management" / "commands").is_dir()
        for module in pkgutil.iter_modules([str(root / app / "management" / "commands")])
    ]
    assert commands
    assert [name for name in commands if f'"{name}"' not in tests] == []


def test_setup_schedules_removes_the_sweeper_schedules_of_earlier_versions(db):
    # given: the schedules an earlier version installed (the worker engine sweeps now)
    for name, func in (
        ("afhost.sweep_runs", "afhost.tasks.sweep_runs"),
        ("channels_app.sweep_telegram_updates", "channels_app.tasks.sweep_telegram_updates"),
    ):
        Schedule.objects.create(name=name, func=func, schedule_type=Schedule.MINUTES, minutes=1)
    out = io.StringIO()

    # when: run twice, as on every deploy
    call_command("setup_schedules", stdout=out)
    call_command("setup_schedules", stdout=io.StringIO())

    # then
    assert Schedule.objects.exists() is False
    assert "Removed 2 retired schedule(s)" in out.getvalue()
