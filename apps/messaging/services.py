"""Writes of messaging: send, acknowledge, read, expire (PROTOCOL §4, §5).

Every function here runs its writes in one transaction and rings doorbells only
after commit, so a client that hears a doorbell always finds the rows it announces.
"""

import functools
import uuid
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.db.models import Min, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.accounts.models import Device, User
from apps.common import ids, jsonutil
from apps.common.db import (
    UnnestInsert,
    compact_sql,
    insert_unnest_together,
    opaque_array,
    pg_array,
    retry_on_deadlock,
)
from apps.common.errors import BadRequest, DeviceMismatch, NatterError, NotFound, NotMember
from apps.common.ratelimit import arate_limit_hit_many, rate_limit_hit_many
from apps.messaging import delivery, events, selectors
from apps.messaging.models import Conversation, InboxEntry, Membership, Message, Receipt


@dataclass(frozen=True)
class Ciphertext:
    device_id: int
    envelope: str
    body: bytes


@dataclass(frozen=True)
class SendResult:
    message: Message
    duplicate: bool

    def as_ack(self) -> dict:
        m = self.message
        return {
            "client_id": str(m.client_id),
            "message_id": m.public_id,
            "conversation": ids.encode(ids.CONVERSATION, m.conversation_id),
            "seq": m.seq,
            "server_ts": m.created_at.isoformat().replace("+00:00", "Z"),
        }


# --- Conversations -------------------------------------------------------------------


def conversation_direct_get_or_create(
    *, user: User, other_user_id: int
) -> tuple[Conversation, bool]:
    """Return the one direct conversation of two users, creating it on first use."""
    if other_user_id == user.id:
        raise BadRequest("A direct conversation needs another user.", field="user_id")
    if not User.objects.filter(id=other_user_id, is_active=True).exists():
        raise NotFound("No such user.")
    low, high = sorted((user.id, other_user_id))
    key = f"{low}:{high}"
    existing = Conversation.objects.filter(direct_key=key).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            conversation = Conversation.objects.create(
                kind=Conversation.Kind.DIRECT, direct_key=key
            )
            Membership.objects.bulk_create(
                [
                    Membership(conversation=conversation, user_id=low),
                    Membership(conversation=conversation, user_id=high),
                ]
            )
    except IntegrityError:
        # Both users opened the chat at once: the other transaction won.
        return Conversation.objects.get(direct_key=key), False
    return conversation, True


# --- Sending -------------------------------------------------------------------------


@dataclass(frozen=True)
class SendRequest:
    """One send, as the REST view or a socket frame gives it."""

    sender_device: Device
    conversation_id: int
    client_id: uuid.UUID
    kind: str
    ciphertexts: list[Ciphertext]
    group_body: bytes | None = None
    reply_to_seq: int | None = None
    media_id: int | None = None

    @property
    def key(self) -> tuple[int, uuid.UUID]:
        return (self.sender_device.id, self.client_id)


def message_send(
    *,
    sender_device: Device,
    conversation_id: int,
    client_id: uuid.UUID,
    kind: str,
    ciphertexts: list[Ciphertext],
    group_body: bytes | None = None,
    reply_to_seq: int | None = None,
    media_id: int | None = None,
) -> SendResult:
    """Store a message and one inbox row per recipient device; idempotent on client_id.

    A media message names its upload (`media_id`), which keeps the blob from being
    removed as unused.
    """
    (result,) = message_send_many(
        requests=[
            SendRequest(
                sender_device=sender_device,
                conversation_id=conversation_id,
                client_id=client_id,
                kind=kind,
                ciphertexts=ciphertexts,
                group_body=group_body,
                reply_to_seq=reply_to_seq,
                media_id=media_id,
            )
        ]
    )
    if isinstance(result, NatterError):
        raise result
    return result


def message_send_many(
    *, requests: list[SendRequest], refused: list[NatterError | None] | None = None
) -> list[SendResult | NatterError]:
    """Store a burst of sends with a fixed number of queries: a group commit of sends.

    Under load a process's sockets send together; their direct messages are checked
    and written with one statement, however many there are (two when a check fails
    or a chat is new to this process: the reads, then the write). Each
    request gets its own outcome, in order: a SendResult, or the NatterError that
    refused it (one bad send never fails the others). Group and media messages take
    the one-at-a-time path, whose locking the fan-out relies on.

    `refused`: the rate limits were taken already (`asend_rate_limit_hits`, for
    a burst with no send repeated), each send's refusal or None.
    """
    results: list[SendResult | NatterError | None] = [None] * len(requests)
    first_of: dict[tuple[int, uuid.UUID], int] = {}
    for i, request in enumerate(requests):
        # The same send twice in one burst: it repeats the first's outcome.
        first_of.setdefault(request.key, i)
    firsts = sorted(first_of.values())
    fresh: list[int] = []
    if refused is not None and len(firsts) != len(requests):
        raise ValueError("Limits taken beforehand are for a burst with no send repeated.")
    hits = refused if refused is not None else _send_rate_limit_hits([requests[i] for i in firsts])
    for i, refusal in zip(firsts, hits, strict=True):
        if refusal is None:
            fresh.append(i)
        else:
            results[i] = refusal
    if _checkable_in_the_write(requests, fresh):
        try:
            written = _direct_messages_write_checked(requests, fresh)
        except IntegrityError:
            written = None  # a resend committed elsewhere: the reads below find it
        if written is not None:
            for i, outcome in written.items():
                results[i] = outcome
            fresh = []
    originals, chats = _send_reads([requests[i] for i in fresh])
    _DIRECT_CHATS.update(c for c, kind in chats.kinds.items() if kind == Conversation.Kind.DIRECT)
    unsent = []
    for i in fresh:
        original = originals.get(requests[i].key)
        if original is not None:
            results[i] = SendResult(original, duplicate=True)
        else:
            unsent.append(i)
    direct, one_by_one = _direct_sends_checked(requests, unsent, results, chats)
    if direct:
        try:
            for i, outcome in _direct_messages_store(requests, direct, chats).items():
                results[i] = outcome
        except IntegrityError:
            # A resend of one of them committed meanwhile (from another process):
            # one at a time, each finds its original or stores itself.
            one_by_one += direct
    for i in sorted(one_by_one):
        try:
            results[i] = _message_send_one(requests[i])
        except NatterError as error:
            results[i] = error
    for i, request in enumerate(requests):
        first = results[first_of[request.key]]
        if first_of[request.key] != i:
            results[i] = SendResult(first.message, True) if isinstance(first, SendResult) else first
    return results


# Conversations this process has seen to be direct ones (a conversation's kind never
# changes): their sends try the one-statement path of _direct_messages_write_checked
# first. Bounded: emptied when full, it fills again from the next reads.
_DIRECT_CHATS: set[int] = set()
_DIRECT_CHATS_MAX = 100_000


def _checkable_in_the_write(requests: list[SendRequest], indexes: list[int]) -> bool:
    """Whether every one of these sends may be checked inside its own write: plain
    direct sends (no media, no group body) on Postgres, in chats known to be direct."""
    if len(_DIRECT_CHATS) > _DIRECT_CHATS_MAX:
        _DIRECT_CHATS.clear()
    return (
        bool(indexes)
        and connection.vendor == "postgresql"
        and all(
            requests[i].conversation_id in _DIRECT_CHATS
            and requests[i].media_id is None
            and requests[i].group_body is None
            for i in indexes
        )
    )


def _send_rate_limit_hits(requests: list[SendRequest]) -> list[NatterError | None]:
    """A token of the sender device's send bucket per send, in order: one Redis call."""
    return rate_limit_hit_many(**_send_limit(requests))


async def asend_rate_limit_hits(requests: list[SendRequest]) -> list[NatterError | None]:
    """`_send_rate_limit_hits` on the event loop."""
    return await arate_limit_hit_many(**_send_limit(requests))


def _send_limit(requests: list[SendRequest]) -> dict:
    return {
        "scope": "send",
        "keys": [str(r.sender_device.id) for r in requests],
        "limit": settings.NATTER["SEND_RATE"],
        "period_s": 1,
        "burst": settings.NATTER["SEND_BURST"],
        "message": "Too many messages; slow down.",
    }


def message_send_prepared(
    requests: list[SendRequest], refused: list[NatterError | None]
) -> "_DirectWrite | None":
    """The one statement that checks and writes a burst of sends, for a caller that
    runs it itself (a socket process, on its event loop); None when the burst must
    take `message_send_many`: a send repeated in it or refused by its rate limit
    (taken: `refused`), or one that is not a plain direct send in a chat known to
    be direct (see `_checkable_in_the_write`).

    The caller runs the statement (committed by itself) and hands its rows to
    `message_send_done`; if the statement fails, `message_send_many` with the same
    `refused` stores the sends or finds the ones that were stored.
    """
    indexes = list(range(len(requests)))
    if any(r is not None for r in refused) or len({r.key for r in requests}) != len(requests):
        return None
    if not _checkable_in_the_write(requests, indexes):
        return None
    return _direct_write_prepared(requests, indexes, None)


def message_send_done(write: "_DirectWrite", fetched, ring) -> list[SendResult | NotMember] | None:
    """Each send's outcome from the rows of a `message_send_prepared` statement, its
    devices rung with `ring`; None when a check refused the burst (nothing was
    written: `message_send_many` tells each send what refused it)."""
    results = _direct_write_done(write, fetched, ring)
    return None if results is None else [results[i] for i in write.indexes]


# Named columns, not *: a prepared statement's result must not change shape when a
# migration adds a column under a running server.
_MESSAGE_COLUMNS = (
    "id",
    "conversation_id",
    "seq",
    "sender_user_id",
    "sender_device_id",
    "client_id",
    "kind",
    "reply_to_seq",
    "group_body",
    "fanout_pending",
    "created_at",
)
# The earlier copies of some sends: one lookup per (sender device, client id) key,
# through the unique index, whatever the number of keys (see opaque_array).
_MESSAGES_BY_CLIENT_ID_SQL = f"""
    SELECT {", ".join(_MESSAGE_COLUMNS)}
    FROM unnest({opaque_array("bigint")}, {opaque_array("uuid")}) AS k(device, client)
    CROSS JOIN LATERAL (
        SELECT {", ".join(_MESSAGE_COLUMNS)} FROM messaging_message
        WHERE sender_device_id = k.device AND client_id = k.client
        OFFSET 0
    ) m
"""
# Current members of some conversations (an array of ids), each with the kind and
# last seq of the conversation and, for a direct one, each keyed active device of the member.
# Looked up per conversation and per member (LATERAL ... OFFSET 0 keeps the planner
# from flattening them into joins): flattened, the generic plan of the prepared
# statement hashed whole scans of the conversation and device tables on every
# send, and Postgres switched between it and a custom plan from run to run.
_MEMBERS_AND_DEVICES_SQL = f"""
    SELECT w.id, ms.user_id, ms.kind, ms.last_seq, d.id
    FROM unnest({opaque_array("bigint")}) AS w(id)
    CROSS JOIN LATERAL (
        SELECT m.user_id, c.kind, c.last_seq FROM messaging_conversation c
        JOIN messaging_membership m ON m.conversation_id = c.id AND m.left_seq IS NULL
        WHERE c.id = w.id
        OFFSET 0
    ) ms
    LEFT JOIN LATERAL (
        SELECT d.id FROM accounts_device d
        WHERE ms.kind = 'direct' AND d.user_id = ms.user_id
          AND d.revoked_at IS NULL AND d.identity_key IS NOT NULL
        OFFSET 0
    ) d ON true
"""


def _client_id_keys(requests: list[SendRequest]) -> list[str]:
    keys = sorted({r.key for r in requests})
    return [pg_array(d for d, _ in keys), pg_array((c for _, c in keys), "uuid")]


def _send_reads(requests: list[SendRequest]) -> tuple[dict, "_Chats"]:
    """The earlier copies of these sends (`_messages_by_client_id`), and the members
    and devices of their conversations (`_members_and_devices`).

    On Postgres one statement for both: each read was a round trip that the whole
    batch, every waiting send of the process, sat behind.
    """
    if not requests:
        return {}, _members_and_devices_of_rows([])
    if connection.vendor != "postgresql":
        conversation_ids = {r.conversation_id for r in requests}
        return _messages_by_client_id(requests), _members_and_devices(conversation_ids)
    padding = ", ".join(["NULL"] * len(_MESSAGE_COLUMNS))
    with connection.cursor() as cur:
        cur.execute(
            f"""
            SELECT {", ".join(_MESSAGE_COLUMNS)},
                   NULL::bigint, NULL::bigint, NULL::varchar, NULL::bigint, NULL::bigint
            FROM ({_MESSAGES_BY_CLIENT_ID_SQL}) m
            UNION ALL
            SELECT {padding}, * FROM ({_MEMBERS_AND_DEVICES_SQL}) ms
            """,
            [*_client_id_keys(requests), pg_array(sorted({r.conversation_id for r in requests}))],
        )
        rows = cur.fetchall()
    width = len(_MESSAGE_COLUMNS)
    originals = {}
    for row in rows:
        if row[0] is not None:
            message = Message.from_db(connection.alias, _MESSAGE_COLUMNS, row[:width])
            originals[(message.sender_device_id, message.client_id)] = message
    chats = _members_and_devices_of_rows(row[width:] for row in rows if row[0] is None)
    return originals, chats


def _messages_by_client_id(requests: list[SendRequest]) -> dict[tuple[int, uuid.UUID], Message]:
    if not requests:
        return {}
    wanted = {r.key for r in requests}
    if connection.vendor == "postgresql":
        found = Message.objects.raw(_MESSAGES_BY_CLIENT_ID_SQL, _client_id_keys(requests))
    else:
        found = Message.objects.filter(
            sender_device_id__in={r.sender_device.id for r in requests},
            client_id__in={r.client_id for r in requests},
        )
    return {
        (m.sender_device_id, m.client_id): m
        for m in found
        if (m.sender_device_id, m.client_id) in wanted
    }


def _direct_sends_checked(requests, indexes, results, chats: "_Chats") -> tuple[list, list]:
    """Check direct sends against members and device sets; set errors in `results`.

    `chats` are the members, kinds and devices of their conversations (from
    `_send_reads`). Returns the direct sends that passed and the sends for the
    one-at-a-time path (groups and media).
    """
    if not indexes:
        return [], []
    members, kinds, devices_of, _ = chats
    direct, one_by_one = [], []
    for i in indexes:
        request = requests[i]
        if request.sender_device.user_id not in members[request.conversation_id]:
            results[i] = NotMember()
        elif kinds[request.conversation_id] == Conversation.Kind.GROUP or request.media_id:
            one_by_one.append(i)
        else:
            direct.append(i)
    passed = []
    for i in direct:
        request = requests[i]
        try:
            _direct_send_check(request, members[request.conversation_id], devices_of)
        except NatterError as error:
            results[i] = error
        else:
            passed.append(i)
    return passed, one_by_one


class _Chats(NamedTuple):
    """What a send is checked against, per conversation id (per user for devices)."""

    members: dict[int, set[int]]  # current members' user ids
    kinds: dict[int, str]
    devices_of: dict[int, set[int]]  # keyed active devices of direct chats' members
    last_seqs: dict[int, int]  # the last seq when read: a reply to at most it is valid


def _members_and_devices(conversation_ids: set[int]) -> _Chats:
    """Current members, kind and last seq of each conversation, and the keyed active
    devices of the members of the direct ones (a group's devices are the fan-out's
    business)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute(_MEMBERS_AND_DEVICES_SQL, [pg_array(sorted(conversation_ids))])
            return _members_and_devices_of_rows(cur.fetchall())
    members: dict[int, set[int]] = defaultdict(set)
    kinds: dict[int, str] = {}
    devices_of: dict[int, set[int]] = defaultdict(set)
    last_seqs: dict[int, int] = {}
    for conversation_id, user_id, kind, last_seq in (
        Membership.objects.current()
        .filter(conversation_id__in=conversation_ids)
        .values_list("conversation_id", "user_id", "conversation__kind", "conversation__last_seq")
    ):
        members[conversation_id].add(user_id)
        kinds[conversation_id] = kind
        last_seqs[conversation_id] = last_seq
    direct_users = {
        u for c, users in members.items() if kinds[c] == Conversation.Kind.DIRECT for u in users
    }
    for device_id, user_id in (
        Device.objects.active()
        .filter(user_id__in=direct_users, identity_key__isnull=False)
        .values_list("id", "user_id")
    ):
        devices_of[user_id].add(device_id)
    return _Chats(members, kinds, devices_of, last_seqs)


def _members_and_devices_of_rows(rows) -> _Chats:
    """`_Chats` from (conversation, user, kind, last seq, device or None) rows."""
    chats = _Chats(defaultdict(set), {}, defaultdict(set), {})
    for conversation_id, user_id, kind, last_seq, device_id in rows:
        chats.members[conversation_id].add(user_id)
        chats.kinds[conversation_id] = kind
        chats.last_seqs[conversation_id] = last_seq
        if device_id is not None:
            chats.devices_of[user_id].add(device_id)
    return chats


def _direct_send_check(request: SendRequest, members: set[int], devices_of: dict) -> None:
    """Refuse a direct send whose ciphertexts are not for exactly the expected devices.

    The exact device set: every active device of the other member and the sender's
    other devices, so a client never silently misses one. A device that has not
    published keys yet could not decrypt anything: it is not counted (`devices_of`,
    from _members_and_devices, holds the keyed active devices of each member).
    """
    expected = set().union(*(devices_of[u] for u in members)) - {request.sender_device.id}
    if request.group_body is not None:
        raise BadRequest("group_body is for group conversations only.", field="group_body")
    given = [c.device_id for c in request.ciphertexts]
    if len(set(given)) != len(given):
        raise BadRequest("A device appears twice in ciphertexts.", field="ciphertexts")
    missing, extra = expected - set(given), set(given) - expected
    if missing or extra:
        raise DeviceMismatch(
            missing=sorted(ids.encode(ids.DEVICE, d) for d in missing),
            extra=sorted(ids.encode(ids.DEVICE, d) for d in extra),
        )


@retry_on_deadlock
def _direct_messages_store(requests, indexes, chats: _Chats) -> dict[int, SendResult | NatterError]:
    """Write checked direct sends in one transaction; seqs in request order per chat.

    A reply naming a seq not below its own is refused and the rest written again
    without it, so seqs stay gapless. When every reply names a seq that existed
    when the chats were read (so below any seq the send can get), Postgres writes
    the sends with one statement (`_direct_messages_write_at_once`).
    """
    members = chats.members
    if connection.vendor == "postgresql" and all(
        requests[i].reply_to_seq is None
        or requests[i].reply_to_seq <= chats.last_seqs[requests[i].conversation_id]
        for i in indexes
    ):
        return _direct_messages_write_at_once(requests, indexes, members)
    refused: dict[int, SendResult | NatterError] = {}
    while indexes:
        bad = []
        with transaction.atomic():
            counts = Counter(requests[i].conversation_id for i in indexes)
            # The seqs and the recipients' inbox cursors in one statement.
            device_counts = Counter(c.device_id for i in indexes for c in requests[i].ciphertexts)
            last, cursors = _counters_reserve(
                _conversation_seqs(counts), _device_cursors(device_counts)
            )
            last = _seqs_checked(last, counts)
            next_seq = {c: last[c] - counts[c] + 1 for c in counts}
            messages = []
            for i in indexes:
                request = requests[i]
                seq = next_seq[request.conversation_id]
                next_seq[request.conversation_id] += 1
                if request.reply_to_seq is not None and request.reply_to_seq >= seq:
                    bad.append(i)
                messages.append(_message_new(request, seq))
            if not bad:
                _messages_write(requests, indexes, messages, members, cursors)
                return {
                    **refused,
                    **{
                        i: SendResult(m, duplicate=False)
                        for i, m in zip(indexes, messages, strict=True)
                    },
                }
            transaction.set_rollback(True)  # give the reserved seqs back
        for i in bad:
            refused[i] = BadRequest(
                "reply_to_seq must name an earlier message.", field="reply_to_seq"
            )
        indexes = [i for i in indexes if i not in refused]
    return refused


def _direct_messages_write_at_once(
    requests, indexes, members: dict[int, set[int]] | None
) -> dict[int, SendResult | NotMember] | None:
    """Reserve the seqs and inbox cursors of direct sends and insert their messages,
    inbox rows and receipts, all in one statement, committed by itself.

    A transaction of its own took four round trips (BEGIN, the reservation, the
    inserts, COMMIT), and a process's next batch of sends waited for all four:
    4.7 ms of a 7.9 ms batch at 500 msgs/s, for 0.6 ms of Postgres's work. Each
    row's seq or cursor is computed in the statement from the reserved last value
    and how far below it the row is. What changed since the sends were checked
    drops only what it concerns: a device revoked meanwhile has no cursor and gets
    no row; a chat deleted meanwhile has no seq, so its messages, their rows and
    receipts are not inserted and its sends get NotMember. A resend that committed
    elsewhere breaks the client id's constraint and rolls the statement back.

    `members` (each chat's current members, from `_send_reads`) name the
    receipts' users. None: the sends were not checked yet, and the statement
    checks them itself (`_direct_messages_write_checked`).
    """
    write = _direct_write_prepared(requests, indexes, members)
    # In a test's transaction, a savepoint: an IntegrityError must not abort it.
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        with connection.cursor() as cur:
            cur.execute(write.sql, write.params)
            fetched = cur.fetchall()
    return _direct_write_done(write, fetched, events.ring_doorbells_on_commit)


class _DirectWrite(NamedTuple):
    """The statement of `_direct_messages_write_at_once`, and what reads its rows."""

    sql: str
    params: list
    checked: bool  # with the send checks as its guard
    indexes: list[int]
    messages: list[Message]
    seqs_back: list[int]
    rows: list["InboxRow"]
    device_counts: Counter
    payloads: list


def _direct_write_prepared(requests, indexes, members: dict[int, set[int]] | None) -> _DirectWrite:
    messages = [_message_new(requests[i], seq=0) for i in indexes]
    seqs_back, counts = _countdown([m.conversation_id for m in messages])
    # The names are _counters_statement's: the seqs are the first reservation
    # (updated0), the cursors the second (updated1), the messages the first insert.
    stored = 'k."message_id" IN (SELECT id FROM inserted0)'  # the messages inserted
    if members is None:
        rows = [
            row
            for i, message in zip(indexes, messages, strict=True)
            for row in _pairwise_rows(message, requests[i].ciphertexts)
        ]
        receipts, guard = _MEMBER_RECEIPTS, _send_checks(requests, indexes)
    else:
        rows, pairs = _rows_and_receipts(requests, indexes, messages, members)
        receipts, guard = _receipts_unnest(pairs, where=stored), None
    cursors_back, device_counts = _countdown([r.device_id for r in rows])
    payloads = [None] * len(rows)  # a message's rows carry its ciphertext, no payload
    sql, params = _counters_statement(
        (_conversation_seqs(counts), _device_cursors(device_counts)),
        (
            _messages_unnest(
                messages,
                seqs=seqs_back,
                numbered=("seq", "conversation_id", "updated0"),
                returning="id, conversation_id, sender_user_id",
            ),
            receipts,
            _inbox_unnest(
                rows,
                list(enumerate(cursors_back)),
                payloads,
                numbered=("cursor", "device_id", "updated1"),
                where=stored,
            ),
        ),
        guard,
    )
    return _DirectWrite(
        sql, params, guard is not None, indexes, messages, seqs_back, rows, device_counts, payloads
    )


def _direct_write_done(
    write: _DirectWrite, fetched, ring
) -> dict[int, SendResult | NotMember] | None:
    """The outcome of each send of a `_DirectWrite` from its statement's rows, its
    devices rung with `ring` (when the write commits); None when its guard
    refused the sends (nothing was written)."""
    last, cursors = _counters_results(fetched, 2)
    if write.checked and not last:
        return None  # a check failed (or every chat is gone): nothing was written
    messages, rows = write.messages, write.rows
    gone = {m.id for m in messages if m.conversation_id not in last}
    for message, back in zip(messages, write.seqs_back, strict=True):
        if message.id not in gone:
            message.seq = last[message.conversation_id] - back
    kept = [
        (index, cursor)
        for index, cursor in _inbox_numbered(rows, cursors, write.device_counts)
        if rows[index].message_id not in gone
    ]
    by_id = {m.id: m for m in messages}
    ring(
        device_ids={rows[index].device_id for index, _ in kept},
        # With rows missing (a deleted chat's), the devices read their inboxes.
        carried={}
        if gone
        else _carried(rows, kept, cursors, write.device_counts, by_id, write.payloads),
    )
    return {
        i: NotMember() if m.id in gone else SendResult(m, duplicate=False)
        for i, m in zip(write.indexes, messages, strict=True)
    }


@retry_on_deadlock
def _direct_messages_write_checked(requests, indexes) -> dict[int, SendResult | NotMember] | None:
    """Check plain direct sends and write them, in one statement: one round trip
    for the batch, where `_send_reads` before the write was another.

    The statement writes only if every send passes what `_send_reads` and
    `_direct_sends_checked` check (see `_send_checks`); otherwise it writes nothing
    and this returns None, and the caller reads and checks the sends as before,
    which tells each one what refused it. The checks read the statement's
    snapshot, as the separate reads read theirs: what changes after it is
    handled as in `_direct_messages_write_at_once`.
    """
    return _direct_messages_write_at_once(requests, indexes, members=None)


# Whether every send of the batch passes its checks: the chat exists and is direct,
# the sender is a current member, no message has the send's client id, a reply
# names a seq that exists, and the devices the ciphertexts are for (sorted ids,
# comma-joined) are exactly the keyed active devices of the chat's members but the
# sending one. One row per send and one per member are looked up through the
# indexes (LATERAL ... OFFSET 0, see _MEMBERS_AND_DEVICES_SQL: joined, the generic
# plan hashed the whole device table for each send).
_SEND_CHECKS_SQL = f"""
    SELECT count(*) = %s::bigint AND coalesce(bool_and(ch.ok), false) AS ok
    FROM unnest({opaque_array()}, {opaque_array()}, {opaque_array()}, {opaque_array("uuid")},
                {opaque_array()}, {opaque_array("text")})
         AS k(conversation, sender, device, client, reply, devices)
    CROSS JOIN LATERAL (
        SELECT c.kind = 'direct'
           AND (k.reply IS NULL OR k.reply <= c.last_seq)
           AND EXISTS (
               SELECT 1 FROM messaging_membership ms
               WHERE ms.conversation_id = c.id AND ms.user_id = k.sender
                 AND ms.left_seq IS NULL)
           AND NOT EXISTS (
               SELECT 1 FROM messaging_message m
               WHERE m.sender_device_id = k.device AND m.client_id = k.client)
           AND k.devices = coalesce((
               SELECT string_agg(d.id::text, ',' ORDER BY d.id)
               FROM messaging_membership ms
               CROSS JOIN LATERAL (
                   SELECT d.id FROM accounts_device d
                   WHERE d.user_id = ms.user_id AND d.revoked_at IS NULL
                     AND d.identity_key IS NOT NULL AND d.id <> k.device
                   OFFSET 0
               ) d
               WHERE ms.conversation_id = c.id AND ms.left_seq IS NULL), '') AS ok
        FROM messaging_conversation c WHERE c.id = k.conversation
        OFFSET 0
    ) ch
"""


def _send_checks(requests, indexes) -> tuple[str, list]:
    """The statement's guard (see _counters_statement) for these sends: _SEND_CHECKS_SQL."""
    sends = [requests[i] for i in indexes]
    return _SEND_CHECKS_SQL, [
        str(len(sends)),
        pg_array(r.conversation_id for r in sends),
        pg_array(r.sender_device.user_id for r in sends),
        pg_array(r.sender_device.id for r in sends),
        pg_array((r.client_id for r in sends), "uuid"),
        pg_array(r.reply_to_seq for r in sends),
        pg_array(
            (",".join(map(str, sorted(c.device_id for c in r.ciphertexts))) for r in sends), "text"
        ),
    ]


_MEMBER_RECEIPTS_SQL = """
    INSERT INTO messaging_receipt (message_id, user_id)
    SELECT i.id, ms.user_id FROM inserted0 i
    CROSS JOIN LATERAL (
        SELECT ms.user_id FROM messaging_membership ms
        WHERE ms.conversation_id = i.conversation_id AND ms.left_seq IS NULL
          AND ms.user_id <> i.sender_user_id
        OFFSET 0
    ) ms
"""


class _MemberReceiptsInsert:
    """The receipts of the messages a statement inserts (`inserted0`, returning id,
    conversation_id, sender_user_id): one per current member of the chat but the
    sender, found by the statement itself (_MEMBER_RECEIPTS_SQL)."""

    rows = True  # always written, from the statement's own rows
    sql = _MEMBER_RECEIPTS_SQL

    def params(self) -> list:
        return []


_MEMBER_RECEIPTS = _MemberReceiptsInsert()


def _countdown(keys: list[int]) -> tuple[list[int], Counter]:
    """How many later items share each item's key, and the count of each key: the
    n items of a key numbered up to its reserved last value L get L - countdown."""
    counts = Counter(keys)
    seen: Counter = Counter()
    back = []
    for key in keys:
        seen[key] += 1
        back.append(counts[key] - seen[key])
    return back, counts


def _message_new(request: SendRequest, seq: int) -> Message:
    return Message(
        conversation_id=request.conversation_id,
        seq=seq,
        sender_user_id=request.sender_device.user_id,
        sender_device=request.sender_device,
        client_id=request.client_id,
        kind=request.kind,
        reply_to_seq=request.reply_to_seq,
    )


def _messages_write(requests, indexes, messages: list[Message], members, cursors) -> None:
    """Insert direct messages, their inbox rows (at the `cursors` reserved for them)
    and receipts.

    On Postgres the three inserts are one statement: one round trip, where one per
    insert cost a round trip each on the batch that every waiting send of the
    process sits behind.
    """
    rows, receipts = _rows_and_receipts(requests, indexes, messages, members)
    by_id = {m.id: m for m in messages}
    if connection.vendor != "postgresql":
        Message.objects.bulk_create(messages)
        inbox_write(rows, messages=by_id, reserved=cursors)
        Receipt.objects.bulk_create([Receipt(message_id=m, user_id=u) for m, u in receipts])
        return
    inbox_write(
        rows,
        along=(
            _messages_unnest(messages),
            _receipts_unnest(receipts),
        ),
        messages=by_id,
        reserved=cursors,
    )


def _rows_and_receipts(requests, indexes, messages: list[Message], members) -> tuple[list, list]:
    """The inbox rows of direct messages (`_pairwise_rows`) and their receipts: a
    (message, user) pair per current member other than the sender."""
    rows, receipts = [], []
    for i, message in zip(indexes, messages, strict=True):
        rows += _pairwise_rows(message, requests[i].ciphertexts)
        receipts += [
            (message.id, u) for u in members[message.conversation_id] if u != message.sender_user_id
        ]
    return rows, receipts


def _receipts_unnest(receipts: list[tuple[int, int]], *, where: str = "") -> UnnestInsert:
    return UnnestInsert(
        Receipt, {"message_id": "bigint", "user_id": "bigint"}, receipts, where=where
    )


def _pairwise_rows(message: Message, ciphertexts: list[Ciphertext]) -> list["InboxRow"]:
    """The inbox rows of a message: one per device it was encrypted for."""
    return [
        InboxRow(c.device_id, InboxEntry.Type.MESSAGE, message.id, c.envelope, c.body)
        for c in ciphertexts
    ]


def _messages_unnest(
    messages: list[Message],
    *,
    seqs: list[int] | None = None,
    numbered: tuple[str, str, str] | None = None,
    returning: str = "",
) -> UnnestInsert:
    """The insert of `messages`, at their seqs or, `numbered` (see UnnestInsert), at
    `seqs` below the reserved last seq."""
    now = timezone.now()
    if seqs is None:
        seqs = [m.seq for m in messages]
    for m in messages:
        m.created_at = now
        m._state.adding = False  # saved with the statement, as bulk_create would mark them
    return UnnestInsert(
        Message,
        {
            "id": "bigint",
            "conversation_id": "bigint",
            "seq": "bigint",
            "sender_user_id": "bigint",
            "sender_device_id": "bigint",
            "client_id": "uuid",
            "kind": "varchar",
            "reply_to_seq": "bigint",
            "fanout_pending": "boolean",
            "created_at": "timestamptz",
        },
        [
            (
                m.id,
                m.conversation_id,
                seq,
                m.sender_user_id,
                m.sender_device_id,
                m.client_id,
                str(m.kind),
                m.reply_to_seq,
                False,
                now,
            )
            for m, seq in zip(messages, seqs, strict=True)
        ],
        numbered=numbered,
        returning=returning,
    )


def _conversation_seqs(counts: dict[int, int]) -> "_Counters":
    """Seqs of conversations: the rows stay locked until commit, so concurrent senders
    queue and a rollback returns the seqs. Sending bumps the chat's last activity."""
    return _Counters(
        "messaging_conversation",
        "last_seq",
        counts,
        also_set="last_activity_at = %s",
        also_params=(timezone.now(),),
    )


def _conversation_seqs_reserve(counts: dict[int, int]) -> dict[int, int]:
    """Reserve `n` seqs per conversation; return the last reserved of each."""
    (last,) = _counters_reserve(_conversation_seqs(counts))
    return _seqs_checked(last, counts)


def _seqs_checked(last: dict[int, int], counts: dict[int, int]) -> dict[int, int]:
    if set(last) != set(counts):
        raise NotMember()  # deleted meanwhile
    return last


def _message_send_one(request: SendRequest) -> SendResult:
    """The one-at-a-time path (groups, media): one transaction for one send.

    message_send_many looked for an earlier copy just before; one committed since
    then (a resend racing this one) breaks the client_id constraint, below.
    """
    try:
        with transaction.atomic():
            message = _message_store(request)
            if request.media_id is not None:
                from apps.media.services import media_attach

                media_attach(
                    media_id=request.media_id,
                    sender_device=request.sender_device,
                    conversation_id=request.conversation_id,
                )
    except IntegrityError:
        # A concurrent resend of the same client_id committed first; the whole
        # transaction (its seq included) rolled back, so seqs stay gapless.
        original = _messages_by_client_id([request]).get(request.key)
        if original is None:
            raise
        return SendResult(original, duplicate=True)
    return SendResult(message, duplicate=False)


def _message_store(request: SendRequest) -> Message:
    sender_device, conversation_id = request.sender_device, request.conversation_id
    members_of, kinds, devices_of, _ = _members_and_devices({conversation_id})
    members = members_of[conversation_id]
    if sender_device.user_id not in members:
        raise NotMember()
    if kinds[conversation_id] == Conversation.Kind.GROUP:
        return _group_message_store(
            sender_device=sender_device,
            conversation_id=conversation_id,
            client_id=request.client_id,
            kind=request.kind,
            ciphertexts=request.ciphertexts,
            group_body=request.group_body,
            reply_to_seq=request.reply_to_seq,
        )
    _direct_send_check(request, members, devices_of)
    return _message_write(
        seq=conversation_next_seq(conversation_id),
        recipients=members,
        sender_device=sender_device,
        conversation_id=conversation_id,
        client_id=request.client_id,
        kind=request.kind,
        ciphertexts=request.ciphertexts,
        reply_to_seq=request.reply_to_seq,
    )


def _message_write(
    *, seq, recipients, sender_device, conversation_id, ciphertexts, reply_to_seq, **fields
) -> Message:
    """Write a message at `seq`, its pairwise inbox rows and a receipt per recipient user."""
    if reply_to_seq is not None and reply_to_seq >= seq:
        raise BadRequest("reply_to_seq must name an earlier message.", field="reply_to_seq")
    message = Message.objects.create(
        conversation_id=conversation_id,
        seq=seq,
        sender_user_id=sender_device.user_id,
        sender_device=sender_device,
        reply_to_seq=reply_to_seq,
        **fields,
    )
    inbox_write(_pairwise_rows(message, ciphertexts), messages={message.id: message})
    Receipt.objects.bulk_create(
        [Receipt(message=message, user_id=u) for u in recipients if u != sender_device.user_id]
    )
    return message


def _group_message_store(
    *, sender_device, conversation_id, client_id, kind, ciphertexts, group_body, reply_to_seq
) -> Message:
    """Store a group message once, with its pairwise extras; the fan-out runs on Celery."""
    if group_body is None:
        raise BadRequest("A group message needs group_body.", field="group_body")
    # The seq first: it locks the conversation, so no membership change can commit
    # between here and the end of this transaction. The members read below are
    # exactly the members at this seq, whatever order the workers later run in.
    seq = conversation_next_seq(conversation_id)
    members = set(
        Membership.objects.current()
        .filter(conversation_id=conversation_id)
        .values_list("user_id", flat=True)
    )
    if sender_device.user_id not in members:
        raise NotMember()
    given = [c.device_id for c in ciphertexts]
    if len(set(given)) != len(given):
        raise BadRequest("A device appears twice in ciphertexts.", field="ciphertexts")
    if given:
        # Pairwise extras (Sender Key distributions) go to chosen member devices only.
        allowed = set(
            Device.objects.active()
            .filter(id__in=given, user_id__in=members)
            .exclude(id=sender_device.id)
            .values_list("id", flat=True)
        )
        if set(given) - allowed:
            raise DeviceMismatch(
                missing=[], extra=sorted(ids.encode(ids.DEVICE, d) for d in set(given) - allowed)
            )
    # Receipts fix the recipients at this seq: the fan-out writes to their devices.
    message = _message_write(
        seq=seq,
        recipients=members,
        sender_device=sender_device,
        conversation_id=conversation_id,
        client_id=client_id,
        kind=kind,
        ciphertexts=ciphertexts,
        reply_to_seq=reply_to_seq,
        group_body=group_body,
        fanout_pending=True,
    )
    events.fanout_on_commit(message_id=message.id)
    return message


def message_fanout(*, message_id: int) -> int:
    """Write a group message's inbox rows for every recipient device; idempotent.

    Recipients are the members at the message's seq (its receipts) and the
    sender's other devices. A row that exists already (a pairwise extra, or an
    earlier run that committed) is skipped by the (device, message) constraint.
    """
    with transaction.atomic():
        message = (
            Message.objects.select_for_update(no_key=True)
            .filter(id=message_id, fanout_pending=True)
            .only("id", "sender_user_id", "sender_device_id")
            .first()
        )
        if message is None:
            return 0  # done already, or expired and purged
        recipients = Receipt.objects.filter(message_id=message_id).values("user_id")
        devices = (
            Device.objects.active()
            .filter(Q(user_id__in=recipients) | Q(user_id=message.sender_user_id))
            .exclude(id=message.sender_device_id)
            .values_list("id", flat=True)
        )
        rows = inbox_append(
            [
                InboxEntry(
                    device_id=d,
                    type=InboxEntry.Type.MESSAGE,
                    message_id=message_id,
                    envelope="group",
                )
                for d in devices
            ],
            ignore_conflicts=True,
        )
        Message.objects.filter(id=message_id).update(fanout_pending=False)
        _group_body_release([message_id])
    return len(rows)


def fanout_pending_ids(*, older_than_s: float) -> list[int]:
    """Group messages whose fan-out has not finished after `older_than_s` seconds."""
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    return list(
        Message.objects.filter(fanout_pending=True, created_at__lt=cutoff)
        .order_by("created_at")
        .values_list("id", flat=True)[:1000]
    )


def _group_body_release(message_ids) -> None:
    # Nothing of a body stays once every device has its copy acked: the group body
    # goes when the fan-out is done and no inbox row of the message is left.
    Message.objects.filter(
        id__in=message_ids, fanout_pending=False, group_body__isnull=False
    ).exclude(
        id__in=InboxEntry.objects.filter(message_id__in=message_ids).values("message_id")
    ).update(group_body=None)


def conversation_next_seq(conversation_id: int) -> int:
    # The row lock taken here is held until commit: concurrent senders queue and
    # each gets the next seq, and a rollback returns its seq.
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE messaging_conversation SET last_seq = last_seq + 1, last_activity_at = %s "
            "WHERE id = %s RETURNING last_seq",
            [timezone.now(), conversation_id],
        )
        row = cur.fetchone()
    if row is None:
        raise NotMember()
    return row[0]


# --- The inbox ---------------------------------------------------------------------


class InboxRow(NamedTuple):
    """An inbox row to write: a plain tuple, not a model (building a model instance
    per row, with its init signals, was 5 % of a loaded socket process)."""

    device_id: int
    type: str
    message_id: int | None = None
    envelope: str = ""
    body: bytes | None = None
    payload: dict | None = None


def inbox_append(rows: list[InboxEntry], *, ignore_conflicts: bool = False) -> list[InboxEntry]:
    """`inbox_write` for model instances: return the ones written, with their cursors."""
    written = inbox_write(
        [InboxRow(r.device_id, r.type, r.message_id, r.envelope, r.body, r.payload) for r in rows],
        ignore_conflicts=ignore_conflicts,
    )
    for index, cursor in written:
        rows[index].cursor = cursor
    return [rows[index] for index, _ in written]


def inbox_write(
    rows: list[InboxRow],
    *,
    ignore_conflicts: bool = False,
    along: tuple[UnnestInsert, ...] = (),
    messages: dict[int, Message] | None = None,
    reserved: dict[int, int] | None = None,
) -> list[tuple[int, int]]:
    """Give each row the next cursor of its device, insert them, ring on commit.

    Rows for devices revoked meanwhile are dropped: their inbox is gone. With
    `ignore_conflicts`, a row whose (device, message) exists is skipped (its
    reserved cursor stays unused: cursors increase, they need not be gapless).
    `along` are other inserts (Postgres only) sent in the same statement, before
    the rows: a direct send's messages and receipts. `messages` are the messages
    of the rows, written in this transaction: with them, each device's doorbell
    carries its new events (see `_carried`). `reserved` are the cursors already
    reserved for these rows (`_device_cursors`, by the caller, in this
    transaction). Returns (index in `rows`, cursor) of each row kept.
    """
    if along and connection.vendor != "postgresql":
        raise ValueError("`along` inserts need Postgres.")
    if not rows:
        insert_unnest_together(*along)
        return []
    counts = Counter(r.device_id for r in rows)
    last = reserved if reserved is not None else _counters_reserve(_device_cursors(counts))[0]
    kept = _inbox_numbered(rows, last, counts)
    # Each payload as stored (JSON text), once for the insert and the doorbell.
    payloads = [None if r.payload is None else jsonutil.dumps(r.payload) for r in rows]
    if connection.vendor == "postgresql":
        insert_unnest_together(
            *along, _inbox_unnest(rows, kept, payloads, skip_conflicts=ignore_conflicts)
        )
    else:
        InboxEntry.objects.bulk_create(
            [InboxEntry(cursor=cursor, **rows[index]._asdict()) for index, cursor in kept],
            ignore_conflicts=ignore_conflicts,
        )
    # A skipped conflict leaves a reserved cursor without its row: nothing is carried
    # then, and the device reads its inbox as for any plain ring.
    carried = (
        {} if ignore_conflicts else _carried(rows, kept, last, counts, messages or {}, payloads)
    )
    events.ring_doorbells_on_commit(device_ids=last.keys(), carried=carried)
    return kept


# The most a doorbell carries for one device, in ciphertext bytes: above it (a large
# group body) the device reads its inbox, and the channel layer's messages stay small.
CARRY_MAX_BYTES = 16 * 1024


def _carried(rows, kept, last, counts, messages: dict[int, Message], payloads) -> dict[int, dict]:
    """What each device's doorbell carries: its new events, exactly as an inbox read
    would return them, and the cursors they follow (`after`) and end at (`last`).

    A socket that has pushed everything up to `after` pushes them without reading
    its inbox: one query and one database hop less per delivery. A device with a
    row whose event is not known here (its message not given), or more than
    CARRY_MAX_BYTES of ciphertext, gets a plain doorbell.
    """
    items: dict[int, list] = defaultdict(list)
    size: Counter = Counter()
    unknown = set()
    for index, cursor in kept:
        row = rows[index]
        if row.device_id in unknown:
            continue
        if row.type != InboxEntry.Type.MESSAGE:
            event = jsonutil.loads(payloads[index])  # as stored: plain JSON
        elif (message := messages.get(row.message_id)) is not None:
            event = selectors.message_event_of(message, row.envelope, row.body)
            size[row.device_id] += len(row.body if row.body is not None else b"") + len(
                message.group_body or b""
            )
        else:
            unknown.add(row.device_id)
            continue
        items[row.device_id].append({"cursor": cursor, "event": event})
    return {
        device_id: {
            "after": last[device_id] - counts[device_id],
            "last": last[device_id],
            "items": found,
        }
        for device_id, found in items.items()
        if device_id not in unknown and size[device_id] <= CARRY_MAX_BYTES
    }


def _inbox_numbered(
    rows: list[InboxRow], last: dict[int, int], counts: Counter
) -> list[tuple[int, int]]:
    """(index, cursor) of each row, numbered in order with the `counts[device]`
    cursors reserved up to `last[device]`; the rows of devices that got none
    (revoked) are left out."""
    next_cursor = {d: last[d] - counts[d] + 1 for d in last}
    kept = []
    for index, row in enumerate(rows):
        if row.device_id in next_cursor:
            kept.append((index, next_cursor[row.device_id]))
            next_cursor[row.device_id] += 1
    return kept


def _inbox_unnest(
    rows: list[InboxRow],
    kept,
    payloads: list[str | None],
    *,
    skip_conflicts: bool = False,
    numbered: tuple[str, str, str] | None = None,
    where: str = "",
) -> UnnestInsert:
    now = timezone.now()
    return UnnestInsert(
        InboxEntry,
        _INBOX_COLUMNS,
        [
            (
                (r := rows[index]).device_id,
                cursor,
                str(r.type),
                r.message_id,
                r.envelope,
                r.body,
                payloads[index],
                now,
            )
            for index, cursor in kept
        ],
        skip_conflicts,
        numbered=numbered,
        where=where,
    )


_INBOX_COLUMNS = {
    "device_id": "bigint",
    "cursor": "bigint",
    "type": "varchar",
    "message_id": "bigint",
    "envelope": "varchar",
    "body": "bytea",
    "payload": "jsonb",
    "created_at": "timestamptz",
}


def _device_cursors(counts: dict[int, int]) -> "_Counters":
    """Inbox cursors of active devices: the rows stay locked until commit, so one
    device's rows commit in cursor order. Revoked devices get none."""
    return _Counters("accounts_device", "inbox_cursor", counts, only_if="revoked_at IS NULL")


@dataclass(frozen=True)
class _Counters:
    """Add `counts[id]` to `column` of some rows of `table` (and apply `also_set`).

    Rows not matching `only_if` are left alone and missing from the result.
    """

    table: str
    column: str
    counts: dict[int, int]
    only_if: str = ""
    also_set: str = ""
    also_params: tuple = ()

    @property
    def condition(self) -> str:
        return f"AND {self.only_if}" if self.only_if else ""

    @property
    def extra(self) -> str:
        return f", {self.also_set}" if self.also_set else ""


def _counters_reserve(*reservations: _Counters) -> list[dict[int, int]]:
    """Make each reservation, in order; return the new values of each one's rows.

    On Postgres one statement for all of them (`_counters_statement`).
    """
    if connection.vendor != "postgresql":
        return [_counters_reserve_sqlite(r) for r in reservations]
    sql, params = _counters_statement(reservations, (), None)
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return _counters_results(cur.fetchall(), len(reservations))


def _counters_results(rows, count: int) -> list[dict[int, int]]:
    """The rows of a `_counters_statement`, as `_counters_reserve` returns them."""
    results: list[dict[int, int]] = [{} for _ in range(count)]
    for n, row_id, value in rows:
        results[n][row_id] = value
    return results


def _counters_statement(reservations, along, guard: tuple[str, list] | None) -> tuple[str, list]:
    """The statement (Postgres) that makes each reservation, in order, and the
    inserts `along` after them, and its parameters; its rows are read by
    `_counters_results`.

    The n-th reservation's rows are `updated{n}` and the n-th insert is
    `inserted{n}`, for an insert numbered from them. Locks are taken in id order so
    two writers never deadlock, and are FOR NO KEY UPDATE: the foreign keys of rows
    inserted elsewhere are checked at commit (they are deferred) with KEY SHARE
    locks on these rows, which a FOR UPDATE would block out of order (deadlocks seen
    between a batch of sends and a batch of acks under load).

    `guard` (SQL and its parameters) is a query of one boolean column, `ok`: when
    it is false nothing is reserved, so nothing numbered from the reservations is
    inserted either, and every result is empty.

    The text depends only on the reservations' and inserts' kinds, not on their
    rows: it is built once per kind (`_counters_sql`). Building it per batch was
    4 % of a loaded socket process's Python time.
    """
    inserts = [i for i in along if i.rows]
    sql = _counters_sql(
        tuple((r.table, r.column, r.condition, r.extra) for r in reservations),
        tuple(i.sql for i in inserts),
        guard[0] if guard is not None else None,
    )
    params = list(guard[1]) if guard is not None else []
    for r in reservations:
        row_ids = sorted(r.counts)
        ids = pg_array(row_ids)
        params += [ids, pg_array(r.counts[i] for i in row_ids), ids, *r.also_params]
    for insert in inserts:
        params += insert.params()
    return sql, params


@functools.lru_cache(maxsize=64)
def _counters_sql(reservations: tuple, inserts: tuple, guard: str | None) -> str:
    """The text of a `_counters_statement`: (table, column, condition, extra) per
    reservation (see `_Counters`), the inserts' texts, the guard's."""
    parts, selects = [], []
    guarded = ""
    if guard is not None:
        parts.append(f"checked AS ({guard})")
        guarded = "AND (SELECT ok FROM checked)"
    for n, (table, column, condition, extra) in enumerate(reservations):
        parts.append(
            f"""
            wanted{n}(id, n) AS (SELECT * FROM unnest({opaque_array()}, {opaque_array()})),
            locked{n} AS (
                SELECT t.id FROM {table} t
                WHERE t.id = ANY({opaque_array()}) {condition} {guarded}
                ORDER BY t.id FOR NO KEY UPDATE
            ),
            updated{n} AS (
                UPDATE {table} t SET {column} = t.{column} + w.n{extra}
                FROM wanted{n} w JOIN locked{n} l ON l.id = w.id
                WHERE t.id = w.id
                RETURNING t.id, t.{column}
            )"""
        )
        # UNION ALL runs its branches in order: the first reservation's rows are
        # locked before the second's, as with one statement each.
        selects.append(f"SELECT {n}, * FROM updated{n}")
    for n, insert in enumerate(inserts):
        parts.append(f"inserted{n} AS ({insert})")
    return compact_sql(f"WITH {','.join(parts)} {' UNION ALL '.join(selects)}")


def _counters_reserve_sqlite(r: _Counters) -> dict[int, int]:
    # SQLite takes one database-wide write lock: there is nothing to order.
    row_ids = sorted(r.counts)
    cases = " ".join("WHEN %s THEN %s" for _ in row_ids)
    marks = ",".join("%s" for _ in row_ids)
    with connection.cursor() as cur:
        cur.execute(
            f"UPDATE {r.table} SET {r.column} = {r.column} + CASE id {cases} END{r.extra} "
            f"WHERE id IN ({marks}) {r.condition} RETURNING id, {r.column}",
            [*(v for i in row_ids for v in (i, r.counts[i])), *r.also_params, *row_ids],
        )
        return dict(cur.fetchall())


def inbox_ack(*, device: Device, cursor: int) -> int:
    """Delete the device's events up to `cursor`; turn acked messages to delivered."""
    inbox_ack_many(acks=[(device, cursor, 0)])
    return cursor


@retry_on_deadlock
def inbox_ack_many(*, acks: list[tuple[Device, int, int]]) -> None:
    """Ack several devices' inboxes in one transaction: a group commit of acks.

    Each ack is (device, up to cursor, after cursor): it deletes the device's rows
    in (after, up to]. A socket knows that every row of its device up to the
    oldest one it pushed and has not had acked yet was acked before, so it names
    that bound; 0 deletes from the start.

    Under load a process's sockets ack together (every member of a group acks the
    same message); one transaction with a fixed number of queries serves them all,
    instead of a dozen queries per ack.
    """
    spans: dict[int, tuple[int, int]] = {}
    owner: dict[int, int] = {}
    for device, cursor, after in acks:
        if cursor > after:
            known = spans.get(device.id, (after, cursor))
            spans[device.id] = (min(after, known[0]), max(cursor, known[1]))
            owner[device.id] = device.user_id
    if not spans:
        return
    with transaction.atomic():
        acked: dict[int, set[int]] = defaultdict(set)
        with_group_body = set()
        for device_id, message_id, group_body in _inbox_delete(spans):
            if message_id is not None:
                acked[owner[device_id]].add(message_id)
                if group_body:
                    with_group_body.add(message_id)
        if acked:
            _mark_delivered(acked, with_group_body=with_group_body)


def _inbox_delete(
    spans: dict[int, tuple[int, int]],
) -> list[tuple[int, int | None, bool | None]]:
    """Delete each device's rows in its (after, up to] span; return (device, message,
    whether it has a group body)."""
    device_ids = sorted(spans)
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            # Each span is read through the (device, cursor) index with both bounds,
            # per device (LATERAL ... OFFSET 0), and the rows deleted by id. Bounded
            # only by device, the scan went through every index entry of the
            # device's past rows too: deleted, and not yet vacuumed away.
            cur.execute(
                f"""
                DELETE FROM messaging_inboxentry i
                WHERE i.id = ANY(ARRAY(
                    SELECT e.id
                    FROM unnest({opaque_array()}, {opaque_array()}, {opaque_array()})
                         AS s(device, after, upto)
                    CROSS JOIN LATERAL (
                        SELECT e.id FROM messaging_inboxentry e
                        WHERE e.device_id = s.device
                          AND e.cursor > s.after AND e.cursor <= s.upto
                        OFFSET 0
                    ) e
                ))
                RETURNING i.device_id, i.message_id,
                    (SELECT m.group_body IS NOT NULL FROM messaging_message m
                     WHERE m.id = i.message_id)
                """,
                [
                    pg_array(device_ids),
                    pg_array(spans[d][0] for d in device_ids),
                    pg_array(spans[d][1] for d in device_ids),
                ],
            )
            return cur.fetchall()
        deleted = []
        for device_id in device_ids:
            after, upto = spans[device_id]
            cur.execute(
                "DELETE FROM messaging_inboxentry WHERE device_id = %s "
                "AND cursor > %s AND cursor <= %s RETURNING device_id, message_id",
                [device_id, after, upto],
            )
            deleted += cur.fetchall()
    message_ids = {m for _, m in deleted if m is not None}
    grouped = set(
        Message.objects.filter(id__in=message_ids, group_body__isnull=False).values_list(
            "id", flat=True
        )
    )
    return [(d, m, m in grouped) for d, m in deleted]


def inbox_drop(*, device: Device) -> None:
    """Delete a device's whole inbox (the device was revoked)."""
    InboxEntry.objects.filter(device=device).delete()


def _mark_delivered(acked: dict[int, set[int]], *, with_group_body: set[int]) -> None:
    """Turn the receipts of acked messages to delivered; move watermarks; tell senders.

    `acked` maps a user to the messages one of their devices just acked. The first
    device of a user to ack a message is the one that counts.
    """
    now = timezone.now()
    if with_group_body:
        _group_body_release(list(with_group_body))
    touched: dict[int, set[int]] = defaultdict(set)
    for user_id, conversation_id in _receipts_deliver(acked, at=now):
        touched[user_id].add(conversation_id)
    # On Postgres _receipts_deliver locked the memberships already.
    _advance_delivered(touched, at=now, locked=connection.vendor == "postgresql")


def _receipts_deliver(acked: dict[int, set[int]], *, at: datetime) -> list[tuple[int, int]]:
    """Set delivered_at on the receipts still pending; return their (user, conversation).

    The rows are locked in id order, so two processes never deadlock; one that
    another device of the same user just delivered is skipped.

    On Postgres the same statement then locks the memberships of those users in
    those conversations (id order, after the receipts, as before), for the
    watermark that `_delivered_watermark_inputs` reads next. Locked there, that
    read starts after every other ack of theirs has committed, and sees its
    receipts delivered. Locked by the read itself, its snapshot was taken before
    the wait: two devices of a user delivering different messages of a chat at
    once each saw the other's receipt pending, both stopped below it, and the
    sender was not told "delivered" until a later message.
    """
    pairs = sorted((u, m) for u, messages in acked.items() for m in messages)
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute(
                f"""
                WITH locked AS (
                         SELECT r.id FROM messaging_receipt r
                         WHERE r.message_id = ANY({opaque_array()})
                           AND (r.user_id, r.message_id) IN (
                               SELECT * FROM unnest({opaque_array()}, {opaque_array()}))
                           AND r.delivered_at IS NULL
                         ORDER BY r.id FOR NO KEY UPDATE OF r
                     ),
                     delivered AS (
                         UPDATE messaging_receipt r SET delivered_at = %s
                         FROM locked l, messaging_message m
                         WHERE r.id = l.id AND m.id = r.message_id
                         RETURNING r.user_id, m.conversation_id
                     ),
                     members AS (
                         SELECT ms.id FROM messaging_membership ms
                         WHERE (ms.user_id, ms.conversation_id) IN (
                             SELECT user_id, conversation_id FROM delivered)
                         ORDER BY ms.id FOR NO KEY UPDATE
                     )
                -- count(*) reads every row of `members`: each membership is locked.
                SELECT d.user_id, d.conversation_id
                FROM delivered d CROSS JOIN (SELECT count(*) FROM members) held
                """,
                [
                    pg_array(sorted({m for _, m in pairs})),
                    pg_array(u for u, _ in pairs),
                    pg_array(m for _, m in pairs),
                    at,
                ],
            )
            return cur.fetchall()
    # One plain IN query for the whole batch (a long OR of pairs compiles slowly);
    # the pairs are picked out below.
    message_ids = set().union(*acked.values())
    candidates = (
        Receipt.objects.select_for_update(of=("self",))
        .filter(user_id__in=acked, message_id__in=message_ids, delivered_at__isnull=True)
        .order_by("id")
        .values_list("id", "user_id", "message_id", "message__conversation_id")
    )
    fresh = [
        (receipt_id, user_id, conversation_id)
        for receipt_id, user_id, message_id, conversation_id in candidates
        if message_id in acked[user_id]
    ]
    Receipt.objects.filter(id__in=[r[0] for r in fresh]).update(delivered_at=at)
    return [(user_id, conversation_id) for _, user_id, conversation_id in fresh]


def _advance_delivered(touched: dict[int, set[int]], *, at: datetime, locked: bool = False) -> None:
    """Move members' delivered watermarks and tell the senders they passed.

    The watermark is the highest seq below which nothing sent to this member is
    still on its way, so a batched "delivered up to N" never claims a message a
    device of theirs has not acked (one that only an offline device holds, say).
    `touched` maps a user to the conversations whose receipts just changed.
    `locked`: their memberships are locked already (see `_delivered_watermark_inputs`).
    """
    if not touched:
        return
    advanced = {}
    moved = []
    for (
        membership_id,
        user_id,
        conversation_id,
        delivered_seq,
        last,
        pending,
    ) in _delivered_watermark_inputs(touched, locked=locked):
        watermark = last if pending is None else min(last, pending - 1)
        if watermark > delivered_seq:
            advanced[(user_id, conversation_id)] = (delivered_seq, watermark)
            moved.append((membership_id, watermark))
    if not advanced:
        return
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute(
                "UPDATE messaging_membership m SET delivered_seq = a.seq "
                f"FROM unnest({opaque_array()}, {opaque_array()}) AS a(id, seq) WHERE m.id = a.id",
                [pg_array(m for m, _ in moved), pg_array(seq for _, seq in moved)],
            )
    else:
        Membership.objects.bulk_update(
            [Membership(id=m, delivered_seq=seq) for m, seq in moved], ["delivered_seq"]
        )
    _receipt_notify(status="delivered", ranges=advanced, at=at)


def _delivered_watermark_inputs(
    touched: dict[int, set[int]], *, locked: bool = False
) -> list[tuple]:
    """Lock the touched memberships (id order); return for each (membership id, user,
    conversation, delivered_seq, the conversation's last_seq, the seq of the member's
    first message still pending there or None).

    On Postgres, unless they are `locked` already (an ack's `_receipts_deliver`
    does), the memberships are locked by a statement of their own before the read:
    the read's snapshot then holds every other change of their receipts committed
    while this one waited for the lock (see `_receipts_deliver`).
    """
    keys = sorted((u, c) for u, conversations in touched.items() for c in conversations)
    if connection.vendor == "postgresql":
        touched_sql = (
            "(ms.user_id, ms.conversation_id) IN "
            f"(SELECT * FROM unnest({opaque_array()}, {opaque_array()}))"
        )
        params = [pg_array(u for u, _ in keys), pg_array(c for _, c in keys)]
        with connection.cursor() as cur:
            if not locked:
                cur.execute(
                    f"SELECT ms.id FROM messaging_membership ms WHERE {touched_sql} "
                    "ORDER BY ms.id FOR NO KEY UPDATE",
                    params,
                )
            # One statement, so last_seq and the pending receipts are read from the
            # same snapshot: a message committed meanwhile is in neither. Locking the
            # memberships again here costs nothing.
            cur.execute(
                f"""
                SELECT ms.id, ms.user_id, ms.conversation_id, ms.delivered_seq, c.last_seq,
                       (SELECT min(m.seq) FROM messaging_receipt r
                        JOIN messaging_message m ON m.id = r.message_id
                        WHERE r.user_id = ms.user_id AND m.conversation_id = ms.conversation_id
                          AND r.delivered_at IS NULL AND r.expired_at IS NULL)
                FROM messaging_membership ms
                JOIN messaging_conversation c ON c.id = ms.conversation_id
                WHERE {touched_sql}
                ORDER BY ms.id FOR NO KEY UPDATE OF ms
                """,
                params,
            )
            return cur.fetchall()
    # last_seq is read (with the memberships) before the pending receipts: a message
    # committed in between then has its receipt seen as pending, and is never
    # counted as delivered.
    all_conversations = {c for _, c in keys}
    memberships = [
        m
        for m in Membership.objects.select_for_update(of=("self",), no_key=True)
        .select_related("conversation")
        .only("id", "user_id", "conversation_id", "delivered_seq", "conversation__last_seq")
        .filter(user_id__in=touched, conversation_id__in=all_conversations)
        .order_by("id")
        if m.conversation_id in touched[m.user_id]
    ]
    first_pending = {
        (user_id, cid): first
        for user_id, cid, first in Receipt.objects.filter(
            user_id__in=touched,
            delivered_at__isnull=True,
            expired_at__isnull=True,
            message__conversation_id__in={m.conversation_id for m in memberships},
        )
        .values_list("user_id", "message__conversation_id")
        .annotate(first=Min("message__seq"))
    }
    return [
        (
            m.id,
            m.user_id,
            m.conversation_id,
            m.delivered_seq,
            m.conversation.last_seq,
            first_pending.get((m.user_id, m.conversation_id)),
        )
        for m in memberships
    ]


def _receipt_notify(
    *, status: str, ranges: dict[tuple[int, int], tuple[int, int]], at: datetime
) -> None:
    """Put one batched `receipt` event per (reader, conversation) into each sender's devices.

    `ranges` maps (the user who got or read them, conversation) to the seqs
    (low, high] that just turned `status`.
    """
    stamp = _iso(at)
    rows = []
    for by_user_id, cid, device_id in sorted(_receipt_devices(status, ranges)):
        payload = {
            "type": "receipt",
            "conversation": ids.encode(ids.CONVERSATION, cid),
            "status": status,
            "by_user": ids.encode(ids.USER, by_user_id),
            "up_to_seq": ranges[(by_user_id, cid)][1],
            "at": stamp,
        }
        rows.append(InboxRow(device_id, InboxEntry.Type.RECEIPT, payload=payload))
    inbox_write(rows)


def _receipt_devices(status: str, ranges) -> set[tuple[int, int, int]]:
    """(reader, conversation, device) for each active device of each sender with a
    message in a reader's range.

    For "delivered", only messages that really arrived count: a range may hold
    expired ones too, whose senders were told "expired".

    Each range is read through the (conversation, seq) index (LATERAL ... OFFSET 0):
    as a plain join the planner hashed a scan of the whole message table on every
    batch of acks, 3 ms on a table of 9,000 messages and growing with it.
    """
    if connection.vendor == "postgresql":
        keys = list(ranges)
        arrived = "AND r.delivered_at IS NOT NULL" if status == "delivered" else ""
        with connection.cursor() as cur:
            cur.execute(
                f"""
                SELECT DISTINCT s.reader, s.cid, d.id
                FROM unnest({opaque_array()}, {opaque_array()}, {opaque_array()}, {opaque_array()})
                     AS s(reader, cid, lo, hi)
                CROSS JOIN LATERAL (
                    SELECT m.id, m.sender_user_id FROM messaging_message m
                    WHERE m.conversation_id = s.cid AND m.seq > s.lo AND m.seq <= s.hi
                      AND m.sender_user_id <> s.reader
                    OFFSET 0
                ) m
                JOIN messaging_receipt r ON r.message_id = m.id AND r.user_id = s.reader {arrived}
                JOIN accounts_device d ON d.user_id = m.sender_user_id AND d.revoked_at IS NULL
                """,
                [
                    pg_array(reader for reader, _ in keys),
                    pg_array(cid for _, cid in keys),
                    pg_array(ranges[k][0] for k in keys),
                    pg_array(ranges[k][1] for k in keys),
                ],
            )
            return set(cur.fetchall())
    # One clause per conversation (its readers' ranges merged), the exact ranges
    # picked out below: an OR per (reader, conversation) compiles slowly when a
    # batch holds 255 readers of one group.
    spans: dict[int, tuple[int, int]] = {}
    for (_, cid), (lo, hi) in ranges.items():
        known = spans.get(cid, (lo, hi))
        spans[cid] = (min(known[0], lo), max(known[1], hi))
    in_spans = Q()
    for cid, (lo, hi) in spans.items():
        in_spans |= Q(conversation_id=cid, seq__gt=lo, seq__lte=hi)
    readers = {user_id for user_id, _ in ranges}
    candidates = Message.objects.filter(in_spans, receipts__user_id__in=readers)
    if status == "delivered":
        candidates = candidates.filter(receipts__delivered_at__isnull=False)
    notices = set()
    for reader, cid, sender_id, seq in candidates.values_list(
        "receipts__user_id", "conversation_id", "sender_user_id", "seq"
    ):
        span = ranges.get((reader, cid))
        if span and span[0] < seq <= span[1] and sender_id != reader:
            notices.add((reader, cid, sender_id))
    devices_by_user = defaultdict(list)
    for device_id, owner in (
        Device.objects.active()
        .filter(user_id__in={sender for _, _, sender in notices})
        .values_list("id", "user_id")
    ):
        devices_by_user[owner].append(device_id)
    return {
        (reader, cid, device_id)
        for reader, cid, sender_id in notices
        for device_id in devices_by_user[sender_id]
    }


# --- Reading -------------------------------------------------------------------------


@retry_on_deadlock
def conversation_read(*, device: Device, conversation_id: int, up_to_seq: int) -> int:
    """Move the reader's read pointer; send one batched read receipt to each sender."""
    user_id = device.user_id
    with transaction.atomic():
        # Only the membership is locked: locking the conversation too deadlocked
        # with a member leaving (which locks the conversation, then memberships).
        membership = (
            Membership.objects.select_for_update(no_key=True, of=("self",))
            .select_related("conversation")
            .filter(conversation_id=conversation_id, user_id=user_id)
            .first()
        )
        if membership is None:
            raise NotMember()
        new_read = min(up_to_seq, membership.conversation.last_seq)
        if membership.left_seq is not None:
            # A past member reads what it received, nothing after it left.
            new_read = min(new_read, membership.left_seq)
        old_read = membership.read_seq
        if new_read <= old_read:
            return old_read
        now = timezone.now()
        membership.read_seq = new_read
        # Reading a message means it reached one of the reader's devices.
        membership.delivered_seq = max(membership.delivered_seq, new_read)
        membership.save(update_fields=["read_seq", "delivered_seq"])
        Receipt.objects.filter(
            user_id=user_id,
            message__conversation_id=conversation_id,
            message__seq__gt=old_read,
            message__seq__lte=new_read,
            read_at__isnull=True,
            expired_at__isnull=True,
        ).update(read_at=now, delivered_at=Coalesce("delivered_at", now))
        _receipt_notify(
            status="read",
            ranges={(user_id, conversation_id): (old_read, new_read)},
            at=now,
        )
    return new_read


# --- Devices -------------------------------------------------------------------------


def device_event_broadcast(*, device: Device, action: str) -> None:
    """Tell the user's other devices and everyone sharing a conversation about a device."""
    shared = (
        Membership.objects.current()
        .filter(
            conversation__in=Membership.objects.current()
            .filter(user_id=device.user_id)
            .values("conversation")
        )
        .values("user_id")
    )
    targets = (
        Device.objects.active()
        .filter(Q(user_id__in=shared) | Q(user_id=device.user_id))
        .exclude(id=device.id)
        .values_list("id", flat=True)
    )
    payload = {
        "type": "device",
        "user": ids.encode(ids.USER, device.user_id),
        "device": device.public_id,
        "action": action,
    }
    inbox_append(
        [InboxEntry(device_id=d, type=InboxEntry.Type.DEVICE, payload=payload) for d in targets]
    )


# --- Expiry --------------------------------------------------------------------------


def inbox_expire(*, now: datetime | None = None, batch_size: int = 1000) -> dict:
    """Drop inbox rows past RETENTION_DAYS and tell senders what never arrived.

    Runs from Celery beat. Each batch is its own transaction, so a long backlog of
    expiries never holds locks for long.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.NATTER["RETENTION_DAYS"])
    rows_deleted, _ = InboxEntry.objects.filter(created_at__lt=cutoff).delete()
    receipts_expired = 0
    while True:
        with transaction.atomic():
            batch = list(
                Receipt.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(
                    delivered_at__isnull=True,
                    expired_at__isnull=True,
                    message__created_at__lt=cutoff,
                )
                .values_list(
                    "id",
                    "user_id",
                    "message__conversation_id",
                    "message__seq",
                    "message__sender_user_id",
                )[:batch_size]
            )
            if not batch:
                break
            Receipt.objects.filter(id__in=[b[0] for b in batch]).update(expired_at=now)
            receipts_expired += len(batch)
            _expired_notify(batch, at=now)
    # The metadata (seq, sender, client_id, receipts) served de-duplication and
    # receipts while the message could still arrive; past retention it goes too.
    messages_deleted = 0
    while True:
        old = list(
            Message.objects.filter(created_at__lt=cutoff).values_list("id", flat=True)[:batch_size]
        )
        if not old:
            break
        with transaction.atomic():
            Receipt.objects.filter(message_id__in=old).delete()
            messages_deleted += Message.objects.filter(id__in=old).delete()[0]
    return {
        "inbox_rows_deleted": rows_deleted,
        "receipts_expired": receipts_expired,
        "messages_deleted": messages_deleted,
    }


def _expired_notify(batch, *, at: datetime) -> None:
    seqs = defaultdict(list)  # (conversation, sender, recipient) -> seqs that never arrived
    for _, user_id, cid, seq, sender_id in batch:
        seqs[(cid, sender_id, user_id)].append(seq)
    devices_by_user = defaultdict(list)
    for device_id, owner in (
        Device.objects.active()
        .filter(user_id__in={k[1] for k in seqs})
        .values_list("id", "user_id")
    ):
        devices_by_user[owner].append(device_id)
    stamp = _iso(at)
    rows = []
    for (cid, sender_id, user_id), lost in sorted(seqs.items()):
        lost.sort()
        payload = {
            "type": "receipt",
            "conversation": ids.encode(ids.CONVERSATION, cid),
            "status": "expired",
            "by_user": ids.encode(ids.USER, user_id),
            "up_to_seq": lost[-1],
            "seqs": lost,
            "at": stamp,
        }
        rows += [
            InboxEntry(device_id=d, type=InboxEntry.Type.RECEIPT, payload=payload)
            for d in devices_by_user[sender_id]
        ]
    inbox_append(rows)
    # An expired message no longer holds back the delivered watermark of its member.
    touched = defaultdict(set)
    for cid, _, user_id in seqs:
        touched[user_id].add(cid)
    _advance_delivered(touched, at=at)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# --- Long-poll -----------------------------------------------------------------------


def inbox_poll(*, device: Device, cursor: int, limit: int) -> dict:
    """Ack everything up to `cursor` and return the next page of the device's inbox.

    The ack is capped at the last cursor a page ever handed this device, so a
    client that names a cursor it has not seen yet deletes nothing unseen.
    """
    cursor = min(cursor, _handed_out(device.id))
    if cursor > 0:
        inbox_ack(device=device, cursor=cursor)
    return inbox_page(device=device, after_cursor=cursor, limit=limit)


def inbox_ack_handed_out(*, device: Device, cursor: int) -> int:
    """`POST /events/ack`: ack up to `cursor`, capped like the long-poll's ack."""
    return inbox_ack(device=device, cursor=min(cursor, _handed_out(device.id)))


def inbox_page(*, device: Device, after_cursor: int, limit: int) -> dict:
    """Read the next page of a long-poll and remember how far it handed events out."""
    from apps.messaging.selectors import inbox_after

    page = inbox_after(device_id=device.id, after_cursor=after_cursor, limit=limit + 1)
    has_more = len(page) > limit
    page = page[:limit]
    next_cursor = page[-1]["cursor"] if page else after_cursor
    if page:
        key = _handed_out_key(device.id)
        # Not atomic, and need not be: a lost race leaves a lower cap, which only
        # means an event is pushed again (at-least-once), never one deleted unseen.
        if next_cursor > (cache.get(key) or 0):
            cache.set(key, next_cursor, timeout=86400 * settings.NATTER["RETENTION_DAYS"])
        delivery.mark_pushed(device_id=device.id, cursor=next_cursor, transport="longpoll")
    return {"events": page, "next_cursor": next_cursor, "ephemeral": [], "has_more": has_more}


def _handed_out_key(device_id: int) -> str:
    return f"inbox:handed_out:{device_id}"


def _handed_out(device_id: int) -> int:
    return cache.get(_handed_out_key(device_id)) or 0
