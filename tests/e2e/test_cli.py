"""The `natter` command against a live server, and talking with an SDK client."""

import asyncio
import json
import os
import stat
import uuid

import pytest

from natter_client import NatterClient
from tests.e2e.conftest import BIN

pytestmark = [pytest.mark.asyncio]

PASSWORD = "a long pass phrase 42"


class Cli:
    def __init__(self, url: str, home, profile: str):
        self.url, self.home, self.profile = url, home, profile

    async def run(self, *args: str, stdin: str | None = None, timeout: float = 30) -> str:
        env = {
            **os.environ,
            "NATTER_HOME": str(self.home),
            "NATTER_SERVER": self.url,
            "NATTER_PASSWORD": PASSWORD,
        }
        process = await asyncio.create_subprocess_exec(
            str(BIN / "natter"),
            "--profile",
            self.profile,
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(
            process.communicate(stdin.encode() if stdin else None), timeout
        )
        assert process.returncode == 0, (args, out.decode(), err.decode())
        return out.decode()

    async def listen(self, count: int) -> list[dict]:
        out = await self.run("listen", "--json", "--count", str(count), "--idle", "20")
        return [json.loads(line) for line in out.splitlines() if line.strip()]


async def test_two_terminals_chat_encrypted_and_a_group_works_from_the_cli(natter_server, tmp_path):
    tag = uuid.uuid4().hex[:6]
    alice, bob = f"alice{tag}", f"bob{tag}"
    a = Cli(natter_server.url, tmp_path, "alice")
    b = Cli(natter_server.url, tmp_path, "bob")
    for cli, name in ((a, alice), (b, bob)):
        await cli.run("register", name)
        assert "keys published" in await cli.run("login", name)
    profile = tmp_path / "alice.json"
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600  # token and keys: owner only

    assert (await a.run("send", f"@{bob}", "hello", "from", "the", "terminal")).startswith("✓")
    (got,) = [e for e in await b.listen(1) if e["type"] == "message"]
    assert got["text"] == "hello from the terminal" and got["sender"] == alice

    # A listener and a sender on one profile at once share the key file safely.
    listener = asyncio.create_task(a.listen(2))
    await asyncio.sleep(1.0)
    await b.run("send", f"@{alice}", "one")
    await b.run("send", f"@{alice}", "two")
    texts = [e["text"] for e in await listener if e["type"] == "message"]
    assert texts == ["one", "two"]
    await a.run("send", f"@{bob}", "three")
    assert [e["text"] for e in await b.listen(1) if e["type"] == "message"] == ["three"]

    assert await a.run("safety", f"@{bob}") == await b.run("safety", f"@{alice}")

    # A group, made and used from the terminal, with an SDK member.
    carol = NatterClient(natter_server.url)
    carol_name = f"carol{tag}"
    await carol.register(carol_name, PASSWORD)
    await carol.login(carol_name, PASSWORD, device_name="sdk")
    created = await a.run("group", "create", f"Crew {tag}", f"@{bob}", f"@{carol_name}")
    assert created.startswith(f"created Crew {tag}")
    await a.run("send", f"Crew {tag}", "hi crew")
    (got,) = [e for e in await b.listen(1) if e["type"] == "message"]
    assert got["text"] == "hi crew"
    async with carol.connect("ws", auto_ack=False) as conn:
        async with asyncio.timeout(15):
            async for item in carol.receive(conn):
                if item.type == "message":
                    assert item.text == "hi crew"
                    break
        group_id = item["conversation"]
        await carol.send_text(group_id, "hello from the SDK", connection=conn)
    (got,) = [e for e in await b.listen(1) if e["type"] == "message"]
    assert got["text"] == "hello from the SDK" and got["sender"] == carol_name

    shown = await a.run("group", "remove", f"Crew {tag}", f"@{carol_name}")
    assert carol_name not in shown and bob in shown
    await carol.aclose()


async def test_chat_sends_each_typed_line_and_bad_targets_fail_clearly(natter_server, tmp_path):
    tag = uuid.uuid4().hex[:6]
    a = Cli(natter_server.url, tmp_path, "a")
    bob = NatterClient(natter_server.url)
    await bob.register(f"bob{tag}", PASSWORD)
    await bob.login(f"bob{tag}", PASSWORD)
    await a.run("register", f"ann{tag}")
    await a.run("login", f"ann{tag}")
    out = await a.run("chat", f"@bob{tag}", stdin="first line\nsecond line\n")
    assert out.count("✓ #") == 2
    got = []
    async with bob.connect("ws", auto_ack=False) as conn:
        async with asyncio.timeout(15):
            async for item in bob.receive(conn):
                if item.type == "message":
                    got.append(item.text)
                    if len(got) == 2:
                        break
    assert got == ["first line", "second line"]

    process = await asyncio.create_subprocess_exec(
        str(BIN / "natter"),
        "--profile",
        "a",
        "send",
        "@nobody-by-this-name",
        "hi",
        env={**os.environ, "NATTER_HOME": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 1
    assert b"not_found" in err and b"Traceback" not in err
    await bob.aclose()
