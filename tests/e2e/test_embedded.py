"""The embedded default: no DATABASE_URL, no REDIS_URL; one process on SQLite."""

import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from config.server import COMMAND as DAPHNE
from natter_client import NatterClient
from tests.e2e.conftest import ROOT, _free_port

pytestmark = pytest.mark.asyncio


@pytest.fixture
def embedded_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(SQLITE_PATH=str(tmp_path / "natter.sqlite3"), NATTER_FAST_PASSWORD_HASHER="1")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    port = _free_port()
    log = (tmp_path / "daphne.log").open("w")
    proc = subprocess.Popen(
        [*DAPHNE, "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_the_embedded_default_delivers_over_both_transports(embedded_server):
    alice, bob = NatterClient(embedded_server), NatterClient(embedded_server)
    suffix = uuid.uuid4().hex[:6]
    for client, name in ((alice, "alice"), (bob, "bob")):
        await client.register(f"{name}{suffix}", "a long pass phrase 42", name)
        await client.login(f"{name}{suffix}", "a long pass phrase 42", device_name="laptop")
    conversation = (await alice.direct_conversation(bob.user_id))["id"]
    async with alice.connect("ws") as a, bob.connect("longpoll", poll_timeout=5) as b:
        await a.wait_drained(timeout=10)
        sends = [a.send(conversation, {bob.device_id: b"n%d" % i}) for i in range(20)]
        acks = [await s for s in sends]
        assert [ack.seq for ack in acks] == list(range(1, 21))
        got = [await b.next_event(timeout=10, type="message") for _ in range(20)]
        assert [e["body"] for e in got] == [b"n%d" % i for i in range(20)]
        receipt = await a.next_event(timeout=10, type="receipt")
        assert receipt["status"] == "delivered"
    await alice.aclose()
    await bob.aclose()
