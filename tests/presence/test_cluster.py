"""Presence and typing across server processes: live daphnes on one Redis and Postgres.

Like tests/e2e: real daphne subprocesses on the test database, the SDK as client.
Timings are short through the environment: heartbeat 1 s, TTL 3 s, grace 1 s,
sweep 1 s.
"""

import asyncio
import os
import subprocess
import time
import uuid
from datetime import datetime

import httpx
import pytest
from channels.db import database_sync_to_async

from apps.accounts.models import User
from apps.messaging.models import InboxEntry
from apps.presence.store import get_store
from config.server import COMMAND as DAPHNE
from natter_client import NatterClient
from tests.e2e.conftest import ROOT, _database_url, _free_port

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db]

PASSWORD = "a long pass phrase 42"
TTL_S, GRACE_S, SWEEP_S = 3, 1, 1


class Daphne:
    def __init__(self, env: dict, log_path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [
                *DAPHNE,
                "-e",
                f"tcp:port={self.port}:interface=127.0.0.1",
                "config.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdout=log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daphne exited:\n{self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"daphne did not answer:\n{self.log_path.read_text()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def cluster_env(django_db_setup, django_db_blocker):
    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs Redis (REDIS_URL)")
    return {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "NATTER_FAST_PASSWORD_HASHER": "1",
        "HEARTBEAT_S": "1",
        "PRESENCE_TTL_S": str(TTL_S),
        "PRESENCE_GRACE_S": str(GRACE_S),
        "PRESENCE_SWEEP_S": str(SWEEP_S),
        "DB_POOL_MAX": "4",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def cluster(cluster_env, tmp_path_factory):
    logs = tmp_path_factory.mktemp("cluster")
    servers = [Daphne(cluster_env, logs / f"daphne{i}.log") for i in (1, 2)]
    try:
        yield [s.wait_ready() for s in servers]
    finally:
        for s in servers:
            s.stop()


async def person(url: str, name: str) -> NatterClient:
    client = NatterClient(url)
    handle = f"{name}_{uuid.uuid4().hex[:8]}"
    await client.register(handle, PASSWORD, name.title())
    await client.login(handle, PASSWORD, device_name="laptop")
    return client


async def ephemeral(conn, kind: str, timeout: float = 10) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            notice = await conn.next_ephemeral()
            if notice.get("type") == kind:
                return notice


def process_of(client: NatterClient) -> str:
    user_id = int(client.user_id.split("_")[1])
    [entry] = get_store().devices_of_user(user_id=user_id, now=time.time())
    return entry["process"]


async def test_presence_and_typing_reach_a_user_on_another_process(cluster):
    one, two = cluster
    alice = await person(one.url, "alice")
    bob = await person(one.url, "bob")
    conversation = (await alice.direct_conversation(bob.user_id))["id"]
    bob_on_two = NatterClient(two.url, token=bob.token)
    async with alice.connect("ws") as a:
        a.send_frame({"type": "presence.subscribe", "user_ids": [bob.user_id]})
        assert (await ephemeral(a, "presence"))["status"] == "offline"
        async with bob_on_two.connect("ws") as b:
            assert (await ephemeral(a, "presence")) == {
                "type": "presence",
                "user": bob.user_id,
                "status": "online",
                "last_seen": None,
            }
            assert process_of(alice) != process_of(bob)  # one user on each process

            b.send_frame({"type": "typing", "conversation": conversation, "state": "composing"})
            typing = await ephemeral(a, "typing")
            assert typing == {
                "type": "typing",
                "conversation": conversation,
                "user": bob.user_id,
                "state": "composing",
            }
            a.send_frame({"type": "typing", "conversation": conversation, "state": "composing"})
            assert (await ephemeral(b, "typing"))["user"] == alice.user_id
            left = time.time()
        offline = await ephemeral(a, "presence", timeout=GRACE_S + 5)
        assert offline["status"] == "offline"
        seen = datetime.fromisoformat(offline["last_seen"]).timestamp()
        assert abs(seen - left) < 2

    def typing_rows():
        return InboxEntry.objects.filter(payload__type="typing").count()

    assert await database_sync_to_async(typing_rows)() == 0
    for c in (alice, bob, bob_on_two):
        await c.aclose()


async def test_a_killed_process_s_devices_turn_offline_within_the_ttl(
    cluster, cluster_env, tmp_path
):
    one, _ = cluster
    doomed = await asyncio.to_thread(Daphne(cluster_env, tmp_path / "doomed.log").wait_ready)
    alice = await person(one.url, "alice")
    bob = await person(one.url, "bob")
    bob_on_doomed = NatterClient(doomed.url, token=bob.token)
    try:
        async with alice.connect("ws") as a:
            a.send_frame({"type": "presence.subscribe", "user_ids": [bob.user_id]})
            assert (await ephemeral(a, "presence"))["status"] == "offline"
            b = bob_on_doomed.connect("ws")
            await b.start()
            assert (await ephemeral(a, "presence"))["status"] == "online"
            doomed_process = process_of(bob)
            await asyncio.sleep(1.5)  # a heartbeat or two
            doomed.proc.kill()  # SIGKILL: no disconnect, no release, nothing
            killed = time.time()

            offline = await ephemeral(a, "presence", timeout=TTL_S + SWEEP_S + 5)
            took = time.time() - killed
            assert offline["status"] == "offline"
            # Within the TTL plus one sweep (plus the sweep's own heartbeat-driven start).
            assert took < TTL_S + SWEEP_S + 1.5, took
            last_seen = datetime.fromisoformat(offline["last_seen"]).timestamp()
            assert killed - 2.5 < last_seen <= killed + 0.5  # its last heartbeat
            await b.aclose()

        def written():
            return User.objects.get(id=int(bob.user_id.split("_")[1])).last_seen

        assert abs((await database_sync_to_async(written)()).timestamp() - last_seen) < 0.01
        live = {p for p, _, _ in get_store().processes(now=time.time())}
        assert doomed_process not in live
    finally:
        doomed.stop()
        for c in (alice, bob, bob_on_doomed):
            await c.aclose()
