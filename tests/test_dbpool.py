"""The pool checks a connection before handing it out only when it sat idle."""

import psycopg
import pytest
from django.db import connection
from psycopg_pool import ConnectionPool

from config import dbpool

pytestmark = pytest.mark.django_db


@pytest.fixture
def pool():
    params = connection.get_connection_params()
    with ConnectionPool(
        kwargs={**params, "autocommit": True}, min_size=1, max_size=1, check=dbpool.check_when_idle
    ) as pool:
        pool.wait()
        yield pool


def _backend_pid(pool) -> int:
    with pool.connection() as conn:
        return conn.info.backend_pid


def _kill(pid: int) -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_connection_left_idle_is_checked_and_replaced_when_it_died(pool, monkeypatch):
    first = _backend_pid(pool)
    _kill(first)  # as a Postgres restart does to every pooled connection
    monkeypatch.setattr(dbpool, "CHECK_AFTER_IDLE_S", 0.0)  # it has been idle long enough
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.info.backend_pid != first


def test_a_connection_just_used_is_handed_out_without_a_round_trip(pool, monkeypatch):
    first = _backend_pid(pool)
    _kill(first)
    monkeypatch.setattr(dbpool, "CHECK_AFTER_IDLE_S", 3600.0)
    # Not checked: the dead connection comes back, and its query fails like an
    # outage (callers answer 503 `unavailable`); the pool then drops it.
    with pytest.raises(psycopg.OperationalError):
        with pool.connection() as conn:
            conn.execute("SELECT 1")
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.info.backend_pid != first
