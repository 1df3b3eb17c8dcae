"""Recap the failed tests of the JUnit reports given, last in CI's output.

CI's log is read from its end, where the fault suite and the JS tests print last;
pytest's own summary of `make test` is far above them. This prints each failed or
erroring test with the first line of its message, or that none failed.
"""

import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path


def failures(report: Path) -> list[str]:
    lines = []
    for case in ElementTree.parse(report).iter("testcase"):
        for outcome in ("failure", "error"):
            found = case.find(outcome)
            if found is not None:
                message = (found.get("message") or "").strip().splitlines()
                first = message[0][:300] if message else ""
                name = f"{case.get('classname')}::{case.get('name')}"
                lines.append(f"{outcome.upper()} {name}: {first}")
    return lines


def main(paths: list[str]) -> int:
    for path in map(Path, paths):
        if not path.exists():
            print(f"{path}: no report (the run did not get as far as pytest)")
            continue
        found = failures(path)
        print(f"{path}: {len(found) or 'no'} failed test(s)")
        for line in found:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
