"""Statements made one line (apps.common.db.compact_sql) mean what they meant."""

import pytest
from django.db import connection
from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

from apps.common.db import compact_sql
from apps.messaging import services
from tests.messaging.helpers import send

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="psycopg's statement cache"),
]


def test_whitespace_outside_literals_becomes_one_space():
    assert compact_sql("\n  SELECT a,\n\t\tb\n  FROM t  \n") == "SELECT a, b FROM t"


def test_literals_keep_their_whitespace_and_quotes():
    sql = "SELECT  'a  b\n c',  'it''s  here' ,  x"
    assert compact_sql(sql) == "SELECT 'a  b\n c', 'it''s  here' , x"
    with connection.cursor() as cur:
        cur.execute(compact_sql(sql.replace("x", "1")))
        assert cur.fetchone() == ("a  b\n c", "it's  here", 1)


def test_a_comment_is_refused_rather_than_swallowing_the_rest():
    with pytest.raises(ValueError, match="comment"):
        compact_sql("SELECT 1 -- one\nUNION ALL SELECT 2")
    assert compact_sql("SELECT '-- not a comment'") == "SELECT '-- not a comment'"


def test_a_checked_send_batchs_statement_fits_psycopgs_statement_cache(people):
    # Longer than MAX_CACHED_STATEMENT_LENGTH, psycopg converts its placeholders
    # again on every call (the batch's statement was 4,471 bytes, indented).
    a, b = people.user(), people.user()
    a1, b1 = people.device(a), people.device(b)
    a2, b2 = people.device(a, "phone"), people.device(b, "phone")
    conversation, _ = services.conversation_direct_get_or_create(user=a, other_user_id=b.id)
    send(a1, conversation, [a2, b1, b2])
    statements = []

    def record(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        send(a1, conversation, [a2, b1, b2], reply_to_seq=1)
    (checked,) = [sql for sql in statements if "checked AS (" in sql]
    assert len(checked.encode()) <= MAX_CACHED_STATEMENT_LENGTH
