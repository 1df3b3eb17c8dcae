"""Hot statements are planned once per connection, not on every call (opaque_array).

Postgres counts, per prepared statement of a session, how often it ran a generic
plan (planned once) and how often it planned the call's own values (a custom plan)
in `pg_prepared_statements`. These tests read those counters on the test's own
connection after the real service functions ran. How a custom plan wins over the
generic one depends on the tables' sizes (tiny here); the last test shows the
mechanism with a cost that does not.
"""

import uuid

import pytest
from django.db import connection

from apps.common.db import opaque_array, pg_array
from apps.messaging import selectors, services
from tests.messaging.helpers import send

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="Postgres's plan cache"),
]

CALLS = 12  # psycopg prepares on the 6th call; Postgres weighs plans over 5 more


def plans_of(fragment: str) -> tuple[int, int]:
    """(generic, custom) plan counts of this session's prepared statement holding `fragment`."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE %s",
            ["%" + fragment + "%"],
        )
        rows = cur.fetchall()
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture
def chat(people):
    a, b = people.user(), people.user()
    a1, b1 = people.device(a), people.device(b)
    conversation, _ = services.conversation_direct_get_or_create(user=a, other_user_id=b.id)
    return a1, b1, conversation


def test_a_send_batchs_statement_is_planned_once_not_per_send(chat):
    a1, b1, conversation = chat
    for _ in range(CALLS + 1):  # the chat's first send reads it, then writes unchecked
        request = services.SendRequest(
            sender_device=a1,
            conversation_id=conversation.id,
            client_id=uuid.uuid4(),
            kind="text",
            ciphertexts=[services.Ciphertext(b1.id, "message", b"x")],
        )
        services.message_send_many(requests=[request])
    for fragment in (
        # The checks, then seqs, cursors, messages, inbox rows, receipts (the reads
        # and the unchecked write ran once, for the chat's first send).
        "checked AS (",
    ):
        generic, custom = plans_of(fragment)
        assert generic >= CALLS - 10 and custom <= 5, (fragment, generic, custom)


def test_an_ack_batchs_statements_are_planned_once_not_per_ack(chat):
    a1, b1, conversation = chat
    for _ in range(CALLS):
        send(a1, conversation, [b1])
        services.inbox_ack_many(acks=[(b1, selectors.inbox_last_cursor(device_id=b1.id), 0)])
    for fragment in (
        "AS s(device, after, upto)",  # the acked rows
        "WITH locked AS",  # the receipts turned delivered
        "AS s(reader, cid, lo, hi)",  # the senders' devices to tell
    ):
        generic, custom = plans_of(fragment)
        assert generic >= CALLS - 10 and custom <= 5, (fragment, generic, custom)


def test_a_visible_array_length_makes_postgres_plan_every_call():
    # Why opaque_array exists. Each element joins 10,000 rows: a custom plan that sees
    # 2 elements costs 20,000 rows, the generic plan's guess of 100 elements a million,
    # so Postgres never settles on the generic plan, and plans again on every call.
    # Hidden, both guess 100 and it keeps the generic plan from the sixth call on.
    connection.ensure_connection()
    raw = connection.connection  # psycopg's own connection, to prepare explicitly
    shown = (
        "SELECT count(*) FROM unnest(%s::bigint[]) AS shown(id) "
        "CROSS JOIN generate_series(1, 10000) AS g(n)"
    )
    hidden = shown.replace("%s::bigint[]", opaque_array()).replace("shown", "hidden")
    with raw.cursor() as cur:
        for _ in range(CALLS):
            for sql in (shown, hidden):
                cur.execute(sql, [pg_array([1, 2])], prepare=True)
                assert cur.fetchone() == (20_000,)
    assert plans_of("AS shown(id)") == (0, CALLS)
    assert plans_of("AS hidden(id)") == (CALLS - 5, 5)
