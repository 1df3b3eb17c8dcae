"""bench.load's meter: the CPU that Postgres and the whole machine spent, and per message."""

import os

import pytest
from django.db import connection

from bench.load import Meter


@pytest.mark.django_db
def test_a_query_that_burns_cpu_shows_in_postgres_and_machine_figures():
    with Meter([os.getpid()]) as meter:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM generate_series(1, 3000000)")
    if connection.vendor != "postgresql":
        pytest.skip("Postgres's own processes are measured")
    assert meter.cpu_s["postgres"] > 0.05
    assert meter.postgres_cpu > 0
    assert 0 < meter.machine_busy <= 100 * (os.cpu_count() or 1) + 1


def test_per_message_divides_each_share_by_the_messages():
    meter = Meter([])
    meter.cpu_s = {"server": 2.0, "generator": 0.5, "postgres": None}
    assert meter.per_message(1000) == {
        "server_cpu_ms_per_msg": 2.0,
        "generator_cpu_ms_per_msg": 0.5,
    }
    assert meter.per_message(0) == {}
