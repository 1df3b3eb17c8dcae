"""db_call while the database is unreachable: fail at once, do not queue behind the pool."""

import pytest
from django.db import OperationalError
from psycopg_pool import PoolTimeout

from apps.common import db

# The database threads may hold connections from earlier tests: let them be closed.
pytestmark = [pytest.mark.asyncio, pytest.mark.django_db]


def _starved(calls: list):
    def call():
        calls.append(1)
        try:
            raise PoolTimeout("couldn't get a connection after 3.00 sec")
        except PoolTimeout as exc:  # as Django raises it: wrapped, the pool's error as cause
            raise OperationalError(str(exc)) from exc

    return call


async def test_after_a_pool_timeout_the_next_calls_fail_at_once(monkeypatch):
    """Found by the fault suite (Postgres stopped): each socket frame waited the pool
    timeout in turn, so frames queued through the whole outage unanswered."""
    monkeypatch.setattr(db, "_unreachable_until", 0.0)
    calls: list = []
    with pytest.raises(OperationalError):
        await db.db_call(_starved(calls))()
    with pytest.raises(OperationalError, match="unreachable"):
        await db.db_call(_starved(calls))()
    assert len(calls) == 1  # the second never reached the pool
    monkeypatch.setattr(db, "_unreachable_until", 0.0)  # UNREACHABLE_S later
    with pytest.raises(OperationalError):
        await db.db_call(_starved(calls))()
    assert len(calls) == 2


async def test_other_database_errors_do_not_stop_the_next_calls(monkeypatch):
    monkeypatch.setattr(db, "_unreachable_until", 0.0)

    def deadlock():
        raise OperationalError("deadlock detected")

    with pytest.raises(OperationalError, match="deadlock"):
        await db.db_call(deadlock)()
    assert await db.db_call(lambda: 42)() == 42
