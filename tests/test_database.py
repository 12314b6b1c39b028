"""The web process's connection pool survives connections the server dropped (a PostgreSQL
restart drops them all) without failing a request."""

import time

import psycopg
import pytest
from django.db import connection
from django.urls import reverse

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the connection pool is PostgreSQL's"
)


def _terminate(pid: int) -> None:
    """End a backend from another session, as a server restart would, and wait until it is gone."""
    params = {**connection.get_connection_params(), "autocommit": True}
    params.pop("cursor_factory", None)
    with psycopg.connect(**params) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 10
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            assert time.monotonic() < deadline, f"backend {pid} did not end"
            time.sleep(0.01)


def test_pooled_connections_the_server_dropped_cost_no_request(transactional_db, admin_client):
    # given: every idle connection of the pool, ended by the server
    connection.close()  # this thread's connection goes back to the pool too
    pool = connection.pool
    idle = [pool.getconn() for _ in range(pool.get_stats()["pool_available"])]
    pids = [conn.info.backend_pid for conn in idle]
    for conn in idle:
        pool.putconn(conn)
    for pid in pids:
        _terminate(pid)

    # when
    page = admin_client.get(reverse("admin:afhost_run_changelist"))

    # then
    assert pids
    assert page.status_code == 200
