"""`make run-cluster`: nginx in front of two daphne processes, two workers and beat."""

import asyncio
import os
import signal
import subprocess
import time
import uuid

import httpx
import pytest

from natter_client import NatterClient
from tests.e2e.conftest import ROOT, _database_url, _free_port
from tests.test_metrics import sample

pytestmark = [pytest.mark.asyncio]

PASSWORD = "a long pass phrase 42"


@pytest.fixture
def cluster(django_db_setup, django_db_blocker, tmp_path):
    port = _free_port(count=3)  # nginx, then a daphne on each of the next two
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "PORT": str(port),
        "PROCESSES": "2",
        "CLUSTER_DIR": str(tmp_path / "cluster"),
        "METRICS_TOKEN": "cluster-token",
        "HEARTBEAT_S": "2",
        "DB_POOL_MAX": "8",
    }
    log = (tmp_path / "cluster.log").open("w")
    process = subprocess.Popen(
        ["bash", "scripts/run_cluster.sh"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((tmp_path / "cluster.log").read_text())
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    else:
        raise RuntimeError("the cluster did not start:\n" + (tmp_path / "cluster.log").read_text())
    yield url, port
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    # Nothing is left running: nginx, daphne, workers and beat all stopped.
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "cluster")], capture_output=True)
    assert left.stdout == b""


async def person(url: str, name: str) -> NatterClient:
    client = NatterClient(url)
    handle = f"{name}_{uuid.uuid4().hex[:8]}"
    await client.register(handle, PASSWORD)
    await client.login(handle, PASSWORD)
    return client


async def first_text(client: NatterClient, conn) -> str:
    async with asyncio.timeout(15):
        async for item in client.receive(conn):
            if item.type == "message":
                return item.text


async def test_users_on_different_processes_chat_through_the_cluster(cluster):
    url, port = cluster
    process_a, process_b = f"http://127.0.0.1:{port + 1}", f"http://127.0.0.1:{port + 2}"
    alice, bob, carol = (
        await person(process_a, "alice"),
        await person(process_b, "bob"),
        (await person(url, "carol")),
    )
    direct = (await alice.direct_conversation(bob.user_id))["id"]
    group = (await carol.create_group("Across", [alice.user_id, bob.user_id]))["id"]
    async with (
        alice.connect("ws", auto_ack=False) as a,
        bob.connect("ws", auto_ack=False) as b,
        carol.connect("longpoll", auto_ack=False, poll_timeout=5) as c,
    ):
        await alice.send_text(direct, "from process A", connection=a)
        assert await first_text(bob, b) == "from process A"
        await bob.send_text(direct, "and back from B", connection=b)
        assert await first_text(alice, a) == "and back from B"
        await carol.send_text(group, "via nginx, fanned out by a worker")
        assert await first_text(alice, a) == "via nginx, fanned out by a worker"
        assert await first_text(bob, b) == "via nginx, fanned out by a worker"
        await bob.send_text(group, "to the long-poll", connection=b)
        assert await first_text(carol, c) == "to the long-poll"

        async with httpx.AsyncClient() as http:
            r = await http.get(url + "/metrics", headers={"Authorization": "Bearer cluster-token"})
        assert r.status_code == 200
        # Both processes' sockets, merged whichever process answered.
        assert sample(r.text, "natter_connected_sockets") >= 2
    for client in (alice, bob, carol):
        await client.aclose()
