"""`manage.py worker` stops within seconds however it is told to, as real subprocesses."""

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from afhost.models import Run
from tests.conftest import ROOT, _child_env, _free_port


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stopped_within(cluster, seconds):
    try:
        cluster.process.wait(timeout=seconds)
    except Exception:
        return False
    return True


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [
        (signal.SIGTERM, True),  # systemd's default KillMode, a container runtime
        (signal.SIGTERM, False),  # kill <pid>, systemd's KillMode=mixed
        (signal.SIGINT, True),  # Ctrl-C in a terminal
    ],
)
def test_the_worker_stops_within_ten_seconds(cluster_factory, signum, to_group):
    # given
    cluster = cluster_factory()
    pid = cluster.process.pid

    # when
    if to_group:
        os.killpg(pid, signum)
    else:
        os.kill(pid, signum)

    # then: it is gone, with every process of it
    assert _stopped_within(cluster, 10), cluster.log.read_text()[-3000:]
    deadline = time.monotonic() + 5
    while _group_alive(pid):
        assert time.monotonic() < deadline, subprocess.run(
            ["ps", "-o", "pid,stat,cmd", "-g", str(pid)], capture_output=True, text=True
        ).stdout
        time.sleep(0.1)


def test_a_worker_told_to_stop_finishes_its_turns_first(client, cluster_factory):
    # given: a turn in flight
    cluster = cluster_factory()
    created = client.responses.create(model="demo", input="sleep 1.5", background=True)
    deadline = time.monotonic() + 10
    while not Run.objects.filter(status="in_progress").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)

    # when: Ctrl-C
    os.killpg(cluster.process.pid, signal.SIGINT)

    # then
    assert _stopped_within(cluster, 10)
    assert client.responses.retrieve(created.id).status == "completed"


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [
        (signal.SIGINT, True),  # Ctrl-C on `make run` in a terminal
        (signal.SIGTERM, True),
        (signal.SIGTERM, False),
    ],
)
def test_the_run_script_stops_server_and_worker_within_ten_seconds(
    fake_telegram, django_db_setup, signum, to_group
):
    # given: what `make run` starts, both running
    env = {**_child_env(fake_telegram), "PY": sys.executable, "PORT": str(_free_port())}
    script = subprocess.Popen(
        ["bash", "scripts/run.sh"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not _serving(env["PORT"]) or not _has_worker(script.pid):
        assert time.monotonic() < deadline, "server and worker did not start"
        time.sleep(0.2)

    # when
    if to_group:
        os.killpg(script.pid, signum)
    else:
        os.kill(script.pid, signum)

    # then
    deadline = time.monotonic() + 10
    while script.poll() is None or _group_alive(script.pid):
        if time.monotonic() > deadline:
            os.killpg(script.pid, signal.SIGKILL)
            pytest.fail("server or worker still running 10 s after the signal")
        time.sleep(0.1)


def _serving(port):
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
    except httpx.TransportError:
        return False
    return True


def _has_worker(pgid):
    ps = subprocess.run(["ps", "-o", "args=", "-g", str(pgid)], capture_output=True, text=True)
    return "manage.py worker" in ps.stdout
