"""`make bench`: every scenario against a server it starts, then docs/benchmarks.md.

Each scenario runs as its own process (its own daphne, Postgres database and
Redis database), prints one JSON line, and is checked against the target set
for this 2-core machine. The table, the machine and the commands are written
between the `bench:begin` / `bench:end` markers of docs/benchmarks.md; the rest
of that page (what each figure means, what each change bought) is prose kept
by hand.

    .venv/bin/python -m bench.all [--only throughput,latency500] [--no-write]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.server import drop_databases

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# name, command (after `python -m`), the figure shown first, its target; more
# targets on other figures of the same run are in MORE_TARGETS.
SCENARIOS = [
    # Not a target: the machine's own floor (the disk's flush), which every figure
    # below includes, measured on the idle machine before them.
    ("commit", "bench.commit_probe --seconds 20", "commit_p99_ms", None),
    (
        "throughput",
        "bench.load throughput --pairs 100 --window 8 --processes 2 --seconds 15",
        "delivered_per_s",
        (">=", 2000),
    ),
    (
        "latency500",
        "bench.load latency --rate 500 --pairs 100 --processes 2 --seconds 15",
        "p99_ms",
        ("<=", 25),
    ),
    # Not a target: the same run against daphne relaying Natter's frames with no
    # work (bench/floor.py), the latency that daphne and the generator cost alone.
    (
        "floor500",
        "bench.load latency --rate 500 --pairs 100 --processes 2 --seconds 15 "
        "--app bench.floor:application",
        "p99_ms",
        None,
    ),
    # Not a target: the same again with each send stored (group-committed) before its
    # ack and deleted on the recipient's ack, and nothing else (bench/floor_durable.py):
    # about the least a durable server on this stack costs here.
    (
        "durable500",
        "bench.load latency --rate 500 --pairs 100 --processes 2 --seconds 15 "
        "--app bench.floor_durable:application",
        "p99_ms",
        None,
    ),
    # Not a target: the durable floor plus the contract's `delivered` receipt stored
    # as a row of the sender's device by the recipient's ack (bench/floor_receipts.py):
    # Natter's writes for a direct message, none of its checks or bookkeeping.
    (
        "receipts500",
        "bench.load latency --rate 500 --pairs 100 --processes 2 --seconds 15 "
        "--app bench.floor_receipts:application",
        "p99_ms",
        None,
    ),
    (
        "latency1000",
        "bench.load latency --rate 1000 --pairs 100 --processes 2 --seconds 15",
        "p99_ms",
        None,
    ),
    ("idle", "bench.load idle --sockets 10000 --hold 40", "rss_per_socket_kib", ("<=", 64)),
    ("drain", "bench.load drain --messages 10000", "connect_to_drained_s", ("<=", 2)),
    ("longpoll", "bench.longpoll_hold --polls 1000 --senders 1", "wake_ms_p99", ("<=", 50)),
    (
        "group",
        "bench.group_fanout --members 256 --messages 20 --processes 2",
        "last_device_ms_p99",
        ("<=", 1000),
    ),
    ("media", "bench.media_transfer --mib 50", "server_peak_growth_mib", ("<=", 16)),
]

# The latency target at 500/s is on the median as well as the tail: a row is met
# only when every figure named for it is.
MORE_TARGETS = {"latency500": [("p50_ms", ("<=", 5))]}


def targets_of(name: str, key: str, target) -> list[tuple[str, tuple | None]]:
    """Each (figure, target) a scenario is judged on, its headline figure first."""
    return [(key, target), *MORE_TARGETS.get(name, [])]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {memory:.0f} GiB, {platform.system()}"
        f" {platform.release()}, Python {platform.python_version()}"
    )


def run(name: str, command: str) -> dict:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", *command.split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    elapsed = time.monotonic() - started
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            return {"ok": True, "result": json.loads(line), "elapsed_s": round(elapsed)}
    return {"ok": False, "error": (done.stderr or done.stdout)[-2000:], "elapsed_s": round(elapsed)}


def verdict(value, target) -> str:
    if target is None or value is None:
        return "—"
    op, limit = target
    met = value >= limit if op == ">=" else value <= limit
    return ("met" if met else "**not met**") + f" ({op} {limit})"


def verdicts(result: dict | None, judged: list[tuple[str, tuple | None]]) -> str:
    """The verdict of each judged figure of a run (or of a failed run), named when
    there are several."""
    parts = [verdict(None if result is None else result.get(k), t) for k, t in judged]
    if len(judged) == 1:
        return parts[0]
    return "; ".join(f"{k} {part}" for (k, _), part in zip(judged, parts, strict=True))


def measured(result: dict, judged: list[tuple[str, tuple | None]]) -> str:
    return ", ".join(f"{k} **{result.get(k)}**" for k, _ in judged)


def table(runs: dict) -> str:
    lines = [
        "| scenario | command | measured | target | other figures |",
        "|---|---|---|---|---|",
    ]
    for name, command, key, target in SCENARIOS:
        if name not in runs:
            continue
        outcome = runs[name]
        judged = targets_of(name, key, target)
        if not outcome["ok"]:
            lines.append(f"| {name} | `{command}` | failed | {verdicts(None, judged)} | |")
            continue
        result = outcome["result"]
        shown = {k for k, _ in judged}
        others = ", ".join(
            f"{k} {v}"
            for k, v in result.items()
            if k != "scenario" and k not in shown and not isinstance(v, dict)
        )
        lines.append(
            f"| {name} | `python -m {command}` | {measured(result, judged)} "
            f"| {verdicts(result, judged)} | {others} |"
        )
    return "\n".join(lines)


def write(runs: dict) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        f"{BEGIN}\n"
        f"Last `make bench`: {stamp}, on {machine()}; Postgres and Redis on the same\n"
        "machine, the load generator too. Each row is one scenario's JSON line.\n\n"
        f"{table(runs)}\n"
        f"{END}"
    )
    text = DOC.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        previous, tail = rest.split(END, 1)
        block = _keep_rows_not_rerun(block, previous, runs)
        text = head + block + tail
    else:
        marker = "\n## "
        index = text.find(marker)
        text = text[:index] + "\n\n" + block + "\n" + text[index:]
    DOC.write_text(text)


def _keep_rows_not_rerun(block: str, previous: str, runs: dict) -> str:
    """With --only, the other scenarios keep their last rows (and say when they ran)."""
    kept = [
        line
        for line in previous.splitlines()
        if line.startswith("| ")
        and line.split(" | ")[0][2:] not in runs
        and line.split(" | ")[0][2:] in {name for name, *_ in SCENARIOS}
    ]
    if not kept:
        return block
    rows = {line.split(" | ")[0][2:]: line for line in kept}
    rows.update(
        {line.split(" | ")[0][2:]: line for line in block.splitlines() if line.startswith("| ")}
    )
    ordered = [rows[name] for name, *_ in SCENARIOS if name in rows]
    lines = [line for line in block.splitlines() if not line.startswith("| ") or "---" in line]
    at = lines.index("|---|---|---|---|---|") + 1
    header = "| scenario | command | measured | target | other figures |"
    return "\n".join(lines[: at - 1] + [header, lines[at - 1]] + ordered + lines[at:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--no-write", action="store_true", help="do not touch the docs")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else None
    drop_databases("natter_bench", "natter_bench_load")
    runs = {}
    for name, command, key, target in SCENARIOS:
        if wanted and name not in wanted:
            continue
        print(f"== {name}: python -m {command}", flush=True)
        runs[name] = outcome = run(name, command)
        if outcome["ok"]:
            for figure, goal in targets_of(name, key, target):
                value = outcome["result"].get(figure)
                print(f"   {figure} = {value}  {verdict(value, goal)}  ({outcome['elapsed_s']} s)")
        else:
            print(f"   failed:\n{outcome['error']}")
    print()
    print(table(runs))
    if not args.no_write:
        write(runs)
        print(f"\nwrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
