"""bench.all: a row of the `make bench` table is met only when every target of it is."""

from bench import all as bench_all

LATENCY_RUN = {
    "scenario": "latency",
    "rate_per_s": 500,
    "p50_ms": 3.2,
    "p95_ms": 6.4,
    "p99_ms": 9.1,
}


def latency500_row(result: dict | None) -> str:
    outcome = {"ok": False, "error": "x"} if result is None else {"ok": True, "result": result}
    return bench_all.table({"latency500": outcome}).splitlines()[2]


def test_latency_at_500_is_judged_on_its_median_and_its_tail():
    cells = latency500_row(LATENCY_RUN).split(" | ")

    assert cells[2] == "p99_ms **9.1**, p50_ms **3.2**"
    assert cells[3] == "p99_ms met (<= 25); p50_ms met (<= 5)"
    # The judged figures are not repeated among the others.
    assert "p50_ms" not in cells[4] and "p99_ms" not in cells[4]
    assert "p95_ms 6.4" in cells[4]


def test_a_slow_median_fails_the_row_even_when_the_tail_is_met():
    cells = latency500_row({**LATENCY_RUN, "p50_ms": 7.7}).split(" | ")

    assert cells[3] == "p99_ms met (<= 25); p50_ms **not met** (<= 5)"


def test_a_failed_run_is_reported_failed_without_a_verdict():
    cells = latency500_row(None).split(" | ")

    assert cells[2] == "failed"
    assert cells[3] == "p99_ms —; p50_ms —"


def test_a_scenario_with_one_target_keeps_its_single_verdict():
    outcome = {"ok": True, "result": {"scenario": "drain", "connect_to_drained_s": 0.56}}
    cells = bench_all.table({"drain": outcome}).splitlines()[2].split(" | ")

    assert cells[2] == "connect_to_drained_s **0.56**"
    assert cells[3] == "met (<= 2)"
