"""bench.commit_probe: it times real commits, and every one it counts is stored."""

import pytest
from django.db import connection
from psycopg.conninfo import make_conninfo

from bench.commit_probe import figures, probe

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="probes Postgres"),
]


def conninfo() -> str:
    s = connection.settings_dict
    return make_conninfo(
        host=s["HOST"] or None,
        port=s["PORT"] or None,
        dbname=s["NAME"],
        user=s["USER"] or None,
        password=s["PASSWORD"] or None,
    )


def test_the_probe_counts_only_commits_that_stored_their_row():
    try:
        result = probe(conninfo(), seconds=0.3, interval_s=0.005)
    finally:
        with connection.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS bench_commit_probe")
    assert result["commits"] > 5
    assert result["rows_stored"] == result["commits"]
    assert 0 < result["commit_p50_ms"] <= result["commit_p99_ms"] <= result["commit_max_ms"]
    assert result["select_p50_ms"] > 0


def test_figures_are_order_statistics_in_milliseconds():
    values = [i / 1000 for i in range(1, 1001)]  # 1 ms .. 1000 ms
    assert figures(values) == {
        "p50_ms": 501.0,
        "p99_ms": 991.0,
        "p999_ms": 1000.0,
        "max_ms": 1000.0,
    }
    assert figures([]) == {"p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
