"""A live Natter: daphne and a Celery worker as subprocesses on the test database."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from django.db import connections

from bench.server import free_port as _free_port  # noqa: F401 (the e2e suites' import)
from config.server import COMMAND as DAPHNE

ROOT = Path(__file__).resolve().parents[2]
METRICS_TOKEN = "e2e-metrics-token"
BIN = Path(sys.executable).parent


def _database_url() -> str:
    # The test database pytest-django created: the connection knows its name.
    db = connections["default"].settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("end-to-end tests need Postgres (DATABASE_URL)")
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


class LiveServer:
    def __init__(self, url: str, env: dict, processes: dict[str, subprocess.Popen], logs: Path):
        self.url, self.env, self.processes, self.logs = url, env, processes, logs
        self.media_root = Path(env["MEDIA_ROOT"])
        self.upload_tmp = Path(env["FILE_UPLOAD_TEMP_DIR"])

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


@pytest.fixture(scope="session")
def natter_server(django_db_setup, django_db_blocker, tmp_path_factory):
    if not os.environ.get("REDIS_URL"):
        pytest.skip("end-to-end tests need Redis (REDIS_URL)")
    port = _free_port()
    logs = tmp_path_factory.mktemp("live")
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "HEARTBEAT_S": "2",
        "DB_POOL_MAX": "10",
        "PYTHONUNBUFFERED": "1",
        "MEDIA_ROOT": str(logs / "media"),
        "METRICS_TOKEN": METRICS_TOKEN,
        # Small enough that the over-size tests send the whole body quickly.
        "MEDIA_MAX_BYTES": str(16 * 1024 * 1024),
        "FILE_UPLOAD_TEMP_DIR": str(logs / "upload-tmp"),
    }
    (logs / "upload-tmp").mkdir()
    commands = {
        "daphne": [
            *DAPHNE,
            "-e",
            f"tcp:port={port}:interface=127.0.0.1:backlog=2048",
            "--websocket_timeout",
            "-1",
            "config.asgi:application",
        ],
        "worker": [
            str(BIN / "celery"),
            "-A",
            "config",
            "worker",
            "-l",
            "info",
            "--pool",
            "solo",
            "-n",
            f"e2e-{uuid.uuid4().hex[:6]}@%h",
        ],
    }
    processes = {
        name: subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=(logs / f"{name}.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for name, cmd in commands.items()
    }
    server = LiveServer(f"http://127.0.0.1:{port}", env, processes, logs)
    try:
        _wait_until_ready(server)
        yield server
    finally:
        for p in processes.values():
            p.terminate()
        for p in processes.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_until_ready(server: LiveServer) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for name, p in server.processes.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited early:\n{server.log(name)}")
        try:
            if httpx.get(server.url + "/", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        raise RuntimeError(f"daphne did not answer:\n{server.log('daphne')}")
    while time.monotonic() < deadline:
        if "ready." in server.log("worker"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the Celery worker did not start:\n{server.log('worker')}")


def pytest_collection_modifyitems(items):
    """Mark live-server tests `django_db`, without `transaction=True`.

    The mark makes pytest-django create the test database the live server uses.
    Not transactional on purpose: a per-test TRUNCATE racing the live server's own
    queries can deadlock, and every test makes its own users and conversations.
    The test's own queries run in other threads, outside the test's transaction.
    """
    for item in items:
        if "natter_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.django_db)
