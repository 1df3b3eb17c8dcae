"""scripts/failures.py: CI's last lines name the tests that failed."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "failures.py"

REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" tests="3">
  <testcase classname="tests.a" name="test_passes" time="0.1"/>
  <testcase classname="tests.b" name="test_fails" time="0.2">
    <failure message="assert 1 == 2&#10;  where more lines follow">trace</failure>
  </testcase>
  <testcase classname="tests.c" name="test_errs" time="0.3">
    <error message="failed on setup with &quot;boom&quot;">trace</error>
  </testcase>
</testsuite></testsuites>
"""


def recap(*paths) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, paths)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_each_failed_or_erroring_test_is_named_with_the_first_line_of_its_message(tmp_path):
    report = tmp_path / "test.xml"
    report.write_text(REPORT)

    assert recap(report).splitlines() == [
        f"{report}: 2 failed test(s)",
        "  FAILURE tests.b::test_fails: assert 1 == 2",
        '  ERROR tests.c::test_errs: failed on setup with "boom"',
    ]


def test_a_clean_run_and_a_missing_report_are_both_said(tmp_path):
    clean = tmp_path / "clean.xml"
    clean.write_text(
        '<testsuites><testsuite><testcase classname="t" name="ok"/></testsuite></testsuites>'
    )
    missing = tmp_path / "missing.xml"

    assert recap(clean, missing).splitlines() == [
        f"{clean}: no failed test(s)",
        f"{missing}: no report (the run did not get as far as pytest)",
    ]
