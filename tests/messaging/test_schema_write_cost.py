"""What a message costs Postgres to write: the indexes of the tables every send touches.

Every index is one more entry to write per inserted row, and an index on a column
that an UPDATE changes makes that update non-HOT: a new entry in every index of
the table, and a dead row version left behind. The tables below are written for
every message (docs/benchmarks.md, fourth round).
"""

import pytest
from django.db import connection

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="reads Postgres catalogs"),
]

PER_MESSAGE_TABLES = [
    "messaging_conversation",
    "messaging_message",
    "messaging_receipt",
    "messaging_inboxentry",
    "messaging_membership",
    "accounts_device",
]


def indexes_of(table: str) -> list[dict]:
    """Each index of a table: name, key columns in order, unique, partial, expression."""
    with connection.cursor() as cur:
        cur.execute(
            """
            SELECT i.relname, ix.indisunique, ix.indpred IS NOT NULL, ix.indexprs IS NOT NULL,
                   ARRAY(
                       SELECT a.attname FROM unnest(ix.indkey) WITH ORDINALITY AS k(attnum, n)
                       JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum
                       ORDER BY k.n
                   ),
                   ARRAY(
                       SELECT o.opcname FROM unnest(ix.indclass) WITH ORDINALITY AS k(oid, n)
                       JOIN pg_opclass o ON o.oid = k.oid
                       ORDER BY k.n
                   ),
                   pg_get_indexdef(ix.indexrelid)
            FROM pg_index ix
            JOIN pg_class i ON i.oid = ix.indexrelid
            WHERE ix.indrelid = %s::regclass
            """,
            [table],
        )
        return [
            {
                "name": name,
                "unique": unique,
                "partial": partial,
                "expression": expression,
                "columns": list(columns),
                # (column, operator class): a LIKE index (varchar_pattern_ops) serves
                # other lookups than a plain one on the same column.
                "keys": list(zip(columns, classes, strict=True)),
                "definition": definition,
            }
            for name, unique, partial, expression, columns, classes, definition in cur.fetchall()
        ]


def test_a_send_changes_no_indexed_column_of_its_conversation():
    """last_seq and last_activity_at change on every send: indexed, no update is HOT."""
    changed = {"last_seq", "last_activity_at"}
    for index in indexes_of("messaging_conversation"):
        assert not changed & set(index["columns"]), index["definition"]
        assert not any(column in index["definition"] for column in changed), index["definition"]


def test_sends_and_acks_change_no_indexed_column_of_a_device_or_membership():
    """Inbox cursors (sends), delivered watermarks (acks) and last-active times change
    per message."""
    for table, changed in [
        ("accounts_device", {"inbox_cursor", "last_active_at"}),
        ("messaging_membership", {"delivered_seq", "read_seq"}),
    ]:
        for index in indexes_of(table):
            assert not changed & set(index["columns"]), index["definition"]


@pytest.mark.parametrize("table", PER_MESSAGE_TABLES)
def test_no_plain_index_is_a_prefix_of_another(table):
    """A non-unique index whose columns begin another full index costs a write per
    row and serves no lookup the longer one does not (a foreign key's own index
    beside a unique constraint that starts with the same column, say)."""
    indexes = indexes_of(table)
    covering = [i for i in indexes if not i["partial"] and not i["expression"]]
    for index in indexes:
        if index["unique"] or index["partial"] or index["expression"]:
            continue
        for other in covering:
            if other["name"] == index["name"]:
                continue
            prefix = other["keys"][: len(index["keys"])]
            assert prefix != index["keys"], (
                f"{index['definition']} is covered by {other['definition']}"
            )
