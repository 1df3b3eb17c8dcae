"""How long this machine's Postgres takes to make one small write durable.

    python -m bench.commit_probe [--seconds 20] [--interval-ms 10]

Every sent message waits for one commit (PROTOCOL: stored before its ack), and a
commit waits for the write-ahead log to reach the disk (fdatasync). So the
disk's flush latency is a floor under every latency figure of bench.load, and
its tail is theirs: while a flush stalls, every send of every process waits for
it. This probe measures that floor on an otherwise idle machine: one-row
INSERTs, each its own transaction, `--interval-ms` apart, beside `SELECT 1`
round trips that write nothing (the same connection, so the difference is the
flush). Prints one JSON line and a table.
"""

import argparse
import json
import time

import psycopg

from bench.load import Arrivals, percentiles
from bench.server import bench_env


def probe(conninfo: str, *, seconds: float, interval_s: float = 0.01) -> dict:
    """Time single-row autocommit INSERTs and SELECT 1s for `seconds`."""
    commits, selects = [], []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_commit_probe"
            " (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("TRUNCATE bench_commit_probe")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            conn.execute("INSERT INTO bench_commit_probe DEFAULT VALUES")
            committed = time.perf_counter()
            conn.execute("SELECT 1")
            commits.append(committed - started)
            selects.append(time.perf_counter() - committed)
            time.sleep(interval_s)
        stored = conn.execute("SELECT count(*) FROM bench_commit_probe").fetchone()[0]
    stalls = [c for c in commits if c > Arrivals.STALL_S]  # the same bar as bench.load's
    return {
        "commits": len(commits),
        "rows_stored": stored,
        **{f"commit_{key}": value for key, value in figures(commits).items()},
        "commit_stalls_over_100ms": len(stalls),
        "commit_stalled_s": round(sum(stalls), 2),
        **{f"select_{key}": value for key, value in figures(selects).items()},
        "seconds": seconds,
    }


def figures(values: list[float]) -> dict:
    """p50, p99, p99.9 and max, in milliseconds."""
    return percentiles(values, (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--interval-ms", type=float, default=10)
    args = parser.parse_args()
    env = bench_env("natter_bench_commit")
    conninfo = env["DATABASE_URL"].replace("postgres://", "postgresql://", 1)
    result = {
        "scenario": "commit",
        **probe(conninfo, seconds=args.seconds, interval_s=args.interval_ms / 1000),
    }
    print(json.dumps(result))
    print()
    for key, value in result.items():
        print(f"{key:28} {value!s:>12}")


if __name__ == "__main__":
    main()
