"""`manage.py worker` stops within seconds however it is told to, as real subprocesses."""

import os
import signal
import subprocess
import time

import pytest

from afhost.models import Run


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
