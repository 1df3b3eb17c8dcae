"""A 50 MiB attachment up and down through one daphne process, with its peak memory.

    python -m bench.media_transfer [--mib 50]

The SDK encrypts the file from disk in 64 KiB chunks while it uploads, and
decrypts to disk while it downloads; the server streams it to storage and back.
Prints one JSON line and a table: times, throughput, the daphne process's RSS
before, after and at its peak (VmHWM), and the client's own peak.
"""

import argparse
import asyncio
import hashlib
import json
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path

from bench.server import bench_env, daphne, proc_stats
from natter_client import NatterClient

PASSWORD = "a long pass phrase 42"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def run(url: str, pid: int, mib: int, workdir: Path) -> dict:
    source = workdir / "source.bin"
    with source.open("wb") as handle:
        for _ in range(mib):
            handle.write(os.urandom(1 << 20))
    people = []
    for name in ("alice", "bob"):
        client = NatterClient(url, timeout=120)
        handle_name = f"{name}_{uuid.uuid4().hex[:8]}"
        await client.register(handle_name, PASSWORD)
        await client.login(handle_name, PASSWORD, device_name="bench")
        people.append(client)
    alice, bob = people
    conversation = (await alice.direct_conversation(bob.user_id))["id"]
    idle = proc_stats(pid)

    started = time.perf_counter()
    await alice.send_media(conversation, source, name="source.bin")
    upload_s = time.perf_counter() - started
    after_upload = proc_stats(pid)

    async with bob.connect("ws", auto_ack=False) as conn:
        async with asyncio.timeout(60):
            async for item in bob.receive(conn):
                if item.type == "message" and item["kind"] == "media":
                    content = item.content
                    break
    started = time.perf_counter()
    target = await bob.download_media(content, workdir / "downloaded.bin")
    download_s = time.perf_counter() - started
    after_download = proc_stats(pid)
    identical = sha256_of(source) == sha256_of(target)
    for client in people:
        await client.aclose()
    return {
        "scenario": "media_transfer",
        "mib": mib,
        "identical": identical,
        "upload_s": round(upload_s, 2),
        "download_s": round(download_s, 2),
        "upload_mib_s": round(mib / upload_s, 1),
        "download_mib_s": round(mib / download_s, 1),
        "server_rss_idle_mib": round(idle["rss_kib"] / 1024, 1),
        "server_rss_after_upload_mib": round(after_upload["rss_kib"] / 1024, 1),
        "server_rss_after_download_mib": round(after_download["rss_kib"] / 1024, 1),
        "server_peak_rss_mib": round(after_download["peak_rss_kib"] / 1024, 1),
        "server_peak_growth_mib": round(
            (after_download["peak_rss_kib"] - idle["peak_rss_kib"]) / 1024, 1
        ),
        "client_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=50)
    args = parser.parse_args()
    env = bench_env()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env["MEDIA_ROOT"] = str(workdir / "media")
        with daphne(env, workdir / "daphne.log") as (url, pid):
            try:
                result = asyncio.run(run(url, pid, args.mib, workdir))
            except Exception:
                print((workdir / "daphne.log").read_text()[-3000:])
                raise
    print(json.dumps(result))
    print()
    print(f"{'':34} {'':>10}")
    for key, value in result.items():
        if key != "scenario":
            print(f"{key:34} {value!s:>10}")


if __name__ == "__main__":
    main()
