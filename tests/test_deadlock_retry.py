"""A transaction Postgres picks as a deadlock victim runs again (retry_on_deadlock)."""

import threading

import pytest
from django.db import connection, connections, transaction

from apps.accounts.models import Device
from apps.common.db import retry_on_deadlock


@pytest.mark.django_db(transaction=True)
def test_the_deadlock_victim_is_run_again_and_both_transactions_commit(people):
    first, second = people.device(people.user()), people.device(people.user())
    both_hold_one = threading.Barrier(2)
    calls = {"forward": 0, "backward": 0}
    errors = []

    def lock_both(name, order):
        @retry_on_deadlock
        def work():
            calls[name] += 1
            with transaction.atomic():
                Device.objects.select_for_update().filter(id=order[0].id).first()
                if calls[name] == 1:
                    both_hold_one.wait(timeout=10)  # each holds one row: a cycle
                Device.objects.select_for_update().filter(id=order[1].id).first()
                Device.objects.filter(id=order[1].id).update(name=f"locked {name}")

        try:
            work()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=lock_both, args=("forward", (first, second))),
        threading.Thread(target=lock_both, args=("backward", (second, first))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    # Postgres aborted exactly one of them; it ran a second time and committed.
    assert sorted(calls.values()) == [1, 2]
    assert {d.name for d in Device.objects.filter(id__in=[first.id, second.id])} == {
        "locked forward",
        "locked backward",
    }


def test_inside_an_outer_transaction_nothing_is_retried(db):
    calls = []

    @retry_on_deadlock
    def work():
        calls.append(connection.in_atomic_block)
        return "done"

    assert work() == "done" and calls == [True]
