"""A benchmark's own ASGI application (bench/floor.py and the like), served for a test."""

import contextlib
import os
from pathlib import Path

import psycopg
import pytest

from bench.floor_durable import TABLE
from bench.server import bench_env, daphne
from tests.e2e.conftest import _database_url


@contextlib.contextmanager
def serving(app: str, tmp_path: Path):
    """daphne serving `app` on the test database; yields its URL."""
    with serving_process(app, tmp_path) as (url, _):
        yield url


@contextlib.contextmanager
def serving_process(app: str, tmp_path: Path):
    """daphne serving `app` on the test database; yields its URL and process id."""
    if not os.environ.get("REDIS_URL"):
        pytest.skip("the floors' daphne uses Redis for its channel layer (REDIS_URL)")
    # The floors' rows are not a model's, so no test's flush empties them: each
    # served floor starts with no table, and makes it on its first connect.
    with psycopg.connect(_database_url()) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    env = {**bench_env(), "DATABASE_URL": _database_url()}
    with daphne(env, tmp_path / "server.log", app=app) as (url, pid):
        yield url, pid


def floor_rows() -> list[tuple[int, bytes]]:
    """The floors' stored rows (device, body), oldest first."""
    with psycopg.connect(_database_url()) as conn:
        rows = conn.execute(f"SELECT device_id, body FROM {TABLE} ORDER BY id").fetchall()
    return [(device_id, bytes(body)) for device_id, body in rows]
