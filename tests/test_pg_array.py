"""Array literals built by hand (apps.common.db.pg_array) read back as the values."""

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.db import connection

from apps.common.db import pg_array

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="Postgres arrays"),
]

AWKWARD_TEXT = [
    "",
    "NULL",
    "null",
    'a "quoted" word',
    "back\\slash",
    "\\",
    '\\"',
    "{braces}",
    "comma, separated",
    "  spaces around  ",
    "new\nline\ttab",
    "héllo ✓ 👋",
    None,
    "'single'",
]


def read_back(values, kind: str) -> list:
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT x FROM unnest(%s::{kind}[]) WITH ORDINALITY AS a(x, n) ORDER BY n",
            [pg_array(values, kind)],
        )
        return [row[0] for row in cur.fetchall()]


def test_text_of_every_awkward_shape_reads_back_unchanged():
    assert read_back(AWKWARD_TEXT, "varchar") == AWKWARD_TEXT
    assert read_back(AWKWARD_TEXT, "text") == AWKWARD_TEXT


def test_integers_and_nulls_read_back():
    values = [0, 1, -1, 2**63 - 1, -(2**63), None, 42]
    assert read_back(values, "bigint") == values
    assert read_back([1, None, -7], "int") == [1, None, -7]


def test_bytes_of_every_value_read_back():
    values = [bytes(range(256)), b"", b'"\\{},', None, memoryview(b"\x00\xff")]
    back = read_back(values, "bytea")
    assert [None if b is None else bytes(b) for b in back] == [
        bytes(range(256)),
        b"",
        b'"\\{},',
        None,
        b"\x00\xff",
    ]


def test_uuids_booleans_and_times_read_back():
    ids = [uuid.uuid4(), None, uuid.UUID(int=0)]
    assert read_back(ids, "uuid") == ids
    assert read_back([True, False, None], "boolean") == [True, False, None]
    times = [
        datetime(2026, 11, 28, 9, 30, 1, 123456, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-5))),
        None,
    ]
    assert read_back(times, "timestamptz") == times


def test_json_documents_with_quotes_and_escapes_read_back():
    docs = [{"a": 'say "hi"', "b": "back\\slash", "c": "✓", "d": [1, None]}, None, {}]
    texts = [None if d is None else json.dumps(d) for d in docs]
    back = read_back(texts, "jsonb")
    assert [None if t is None else json.loads(t) for t in back] == docs
