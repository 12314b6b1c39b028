"""The web process's connection pool survives connections the server dropped (a PostgreSQL
restart drops them all) without failing a request, and a request that gets no connection from
it is answered 503 without keeping one."""

import contextlib
import time
from unittest import mock

import psycopg
import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from psycopg_pool import PoolTimeout

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


def _take_every_connection(pool) -> list:
    taken = []
    with contextlib.suppress(PoolTimeout):
        while True:
            taken.append(pool.getconn(timeout=0.5))
    return taken


def test_an_api_request_that_gets_no_connection_is_answered_503_and_keeps_none(
    transactional_db, api_key_factory
):
    # given: every connection of the pool taken, and a pool that waits 0.2 s for one
    _, raw_key = api_key_factory()
    connection.close()
    pool = connection.pool
    taken = _take_every_connection(pool)

    # when
    try:
        with mock.patch.object(pool, "timeout", 0.2):
            response = Client().post(
                "/v1/responses",
                {"model": "demo", "input": "hi"},
                content_type="application/json",
                headers={"Authorization": f"Bearer {raw_key}"},
            )
    finally:
        for conn in taken:
            pool.putconn(conn)

    # then: OpenAI's error body, and the pool whole again once the connections are back
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"
    assert response["Retry-After"] == "1"
    again = _take_every_connection(pool)
    for conn in again:
        pool.putconn(conn)
    assert len(again) == len(taken) == pool.max_size
