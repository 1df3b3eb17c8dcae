"""The fault suite's fixtures: one private stack for the session, and the results table.

Run by `make test-faults` (or `pytest tests/faults`); the plain `make test` never
collects this directory (pyproject.toml's norecursedirs).
"""

import os
from pathlib import Path

import pytest

from .harness import ROOT, ResultsTable, Stack

TABLE_PATH = ROOT / "var" / "faults-table.md"


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.faults)


# The server suite's autouse fixtures talk to Django's cache and channel layers in the
# test process, on the shared Redis; this suite's process needs neither.
@pytest.fixture(autouse=True)
def _fast_hasher():
    yield


@pytest.fixture(autouse=True)
def _fresh_channel_layers():
    yield


@pytest.fixture(autouse=True)
def _clear_rate_limits():
    yield


@pytest.fixture(scope="session")
def stack(request):
    s = Stack()
    failed_before = request.session.testsfailed
    try:
        s.start()
        yield s
    finally:
        keep = request.session.testsfailed > failed_before or bool(os.environ.get("FAULTS_KEEP"))
        s.close(keep_dir=keep)
        if keep:
            print(f"\nfault suite: logs kept in {s.dir}")


@pytest.fixture
def natter(stack):
    """The stack, with everything running again that an earlier scenario stopped."""
    stack.ensure_healthy()
    return stack


@pytest.fixture(scope="session")
def results(request):
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")

    def write_line(text: str) -> None:
        if reporter is not None:
            reporter.write_line(text)
        else:
            print(text)

    table = ResultsTable(write_line)
    request.config._faults_table = table
    return table


def pytest_terminal_summary(terminalreporter, config):
    table = getattr(config, "_faults_table", None)
    if table is None or not table.rows:
        return
    terminalreporter.section("fault suite")
    from .harness import Row

    terminalreporter.write_line(Row.header())
    for row in table.rows:
        terminalreporter.write_line(row.line())
    for row, note in zip(table.rows, table.notes, strict=True):
        if note:
            terminalreporter.write_line(f"{row.scenario}: {note}")
    TABLE_PATH.parent.mkdir(exist_ok=True)
    TABLE_PATH.write_text(table.markdown() + "\n")
    terminalreporter.write_line(f"(markdown: {TABLE_PATH.relative_to(ROOT)})")
