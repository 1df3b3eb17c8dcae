"""The SDK survives its server going away: it reconnects, resumes and resends."""

import asyncio
import subprocess
import time

import httpx
import pytest

from config.server import COMMAND as DAPHNE
from natter_client import NatterClient
from tests.e2e.conftest import ROOT, _free_port
from tests.e2e.test_direct_messaging import chat, for_devices, next_message

pytestmark = pytest.mark.asyncio


def start_daphne(env: dict, port: int, log) -> subprocess.Popen:
    proc = subprocess.Popen(
        [*DAPHNE, "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("daphne did not start")


async def test_the_sdk_reconnects_resumes_and_resends_across_a_server_restart(
    natter_server, tmp_path
):
    port = _free_port()
    second = f"http://127.0.0.1:{port}"
    log = (tmp_path / "second.log").open("w")
    proc = start_daphne(natter_server.env, port, log)
    clients = []
    try:
        alice, bob, conversation = await chat(natter_server.url)
        bob_on_second = NatterClient(second, token=bob.token)
        clients += [alice, bob, bob_on_second]
        async with bob_on_second.connect("ws") as b:
            await b.wait_drained(timeout=10)
            proc.terminate()
            proc.wait(timeout=10)
            # While Bob's server is down: Alice's messages queue in his inbox, and a
            # message Bob sends waits in his SDK, to be resent with the same client_id.
            acks = [
                await alice.send(conversation, for_devices(bob, body=b"m%d" % i)) for i in range(3)
            ]
            pending = asyncio.ensure_future(b.send(conversation, for_devices(alice, body=b"back")))
            await asyncio.sleep(1)
            assert not pending.done()
            proc = await asyncio.to_thread(start_daphne, natter_server.env, port, log)
            got = [await next_message(b, timeout=30) for _ in range(3)]
            assert [e["message_id"] for e in got] == [a.message_id for a in acks]
            ack = await asyncio.wait_for(pending, 30)
            assert ack.seq == 4
        async with alice.connect("longpoll") as a:
            back = await next_message(a)
            assert back["body"] == b"back" and back["message_id"] == ack.message_id
            with pytest.raises(TimeoutError):
                await next_message(a, timeout=1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for c in clients:
            await c.aclose()
