"""Reads of messaging: inbox pages, conversation lists."""

import base64

from django.db import connection
from django.db.models import Max

from apps.accounts.models import Device, User
from apps.accounts.selectors import user_public
from apps.common import ids, jsonutil
from apps.common.db import pg_array
from apps.messaging.models import Conversation, InboxEntry, Membership, Message, Receipt


def inbox_after(*, device_id: int, after_cursor: int, limit: int) -> list[dict]:
    """Return up to `limit` events of a device after `after_cursor`, as wire frames."""
    rows = (
        InboxEntry.objects.filter(device_id=device_id, cursor__gt=after_cursor)
        .select_related("message")
        .order_by("cursor")[:limit]
    )
    return [{"cursor": row.cursor, "event": inbox_event(row)} for row in rows]


def inbox_after_many(requests: list[tuple[int, int, int]]) -> list[list[dict]]:
    """`inbox_after` for several devices at once: (device_id, after_cursor, limit) each.

    One query however many sockets ask, so a group message rung on 255 sockets of
    one process is read in one go (see messaging.batching).
    """
    if connection.vendor != "postgresql":
        return [inbox_after(device_id=d, after_cursor=a, limit=n) for d, a, n in requests]
    with connection.cursor() as cur:
        # Plain tuples, not models: building model instances was most of a push's
        # cost. A group body comes once per message (on its first row), not once
        # per member device.
        cur.execute(
            """
            SELECT a.n, i.cursor, i.type, i.envelope, i.body, i.payload,
                   m.id, m.client_id, m.conversation_id, m.seq, m.sender_user_id,
                   m.sender_device_id, m.kind, m.created_at, m.reply_to_seq,
                   CASE WHEN row_number() OVER (PARTITION BY i.message_id) = 1
                        THEN m.group_body END
            FROM unnest(%s::bigint[], %s::bigint[], %s::int[])
                 WITH ORDINALITY AS a(device_id, after, lim, n)
            CROSS JOIN LATERAL (
                SELECT * FROM messaging_inboxentry e
                WHERE e.device_id = a.device_id AND e.cursor > a.after
                ORDER BY e.cursor LIMIT a.lim
            ) i
            LEFT JOIN messaging_message m ON m.id = i.message_id
            ORDER BY a.n, i.cursor
            """,
            [
                pg_array(r[0] for r in requests),
                pg_array(r[1] for r in requests),
                pg_array((r[2] for r in requests), "int"),
            ],
        )
        rows = cur.fetchall()
    group_bodies = {row[6]: row[15] for row in rows if row[15] is not None}
    results: list[list[dict]] = [[] for _ in requests]
    for row in rows:
        results[row[0] - 1].append({"cursor": row[1], "event": _event_of_row(row, group_bodies)})
    return results


def _event_of_row(row: tuple, group_bodies: dict) -> dict:
    (_, _, kind, envelope, body, payload, message_id, *message) = row[:15]
    if kind != InboxEntry.Type.MESSAGE:
        return jsonutil.loads(payload)  # jsonb comes back as text (Django's loader)
    return message_event(message_id, *message, envelope, body, group_bodies.get(message_id))


def inbox_last_cursor(*, device_id: int) -> int:
    """Return the cursor of the newest event waiting for a device, or 0."""
    value = InboxEntry.objects.filter(device_id=device_id).aggregate(last=Max("cursor"))["last"]
    return value or 0


def inbox_event(row: InboxEntry) -> dict:
    """Build the wire event of one inbox row (PROTOCOL §5)."""
    if row.type != InboxEntry.Type.MESSAGE:
        return row.payload
    return message_event_of(row.message, row.envelope, row.body)


def message_event_of(m: Message, envelope: str, body) -> dict:
    """The `message` event of `m` for the device that has `envelope` and `body`."""
    return message_event(
        m.id,
        m.client_id,
        m.conversation_id,
        m.seq,
        m.sender_user_id,
        m.sender_device_id,
        m.kind,
        m.created_at,
        m.reply_to_seq,
        envelope,
        body,
        m.group_body,
    )


def message_event(
    message_id,
    client_id,
    conversation_id,
    seq,
    sender_user_id,
    sender_device_id,
    kind,
    created_at,
    reply_to_seq,
    envelope,
    body,
    group_body,
) -> dict:
    """The `message` event for one device: its own ciphertext, or the group body."""
    event = {
        "type": "message",
        "message_id": ids.encode(ids.MESSAGE, message_id),
        "client_id": str(client_id),
        "conversation": ids.encode(ids.CONVERSATION, conversation_id),
        "seq": seq,
        "sender": {
            "user": ids.encode(ids.USER, sender_user_id),
            "device": ids.encode(ids.DEVICE, sender_device_id),
        },
        "kind": kind,
        "envelope": envelope,
        "body": None,
        "sent_at": created_at.isoformat().replace("+00:00", "Z"),
        "reply_to_seq": reply_to_seq,
    }
    group_body = _b64(group_body)
    if body is None:
        # A group fan-out row: the group body, stored once with the message.
        event["body"] = group_body
    else:
        event["body"] = _b64(body)
        if group_body is not None:
            # A pairwise extra of a group message (a Sender Key distribution):
            # this device's own ciphertext, and the group body beside it.
            event["group_body"] = group_body
    return event


def _b64(value) -> str | None:
    return None if value is None else base64.b64encode(bytes(value)).decode()


def conversation_list(*, user: User) -> list[dict]:
    """Every conversation of a user with its members, last_seq and the caller's read_seq."""
    memberships = list(
        Membership.objects.current()
        .filter(user=user)
        .select_related("conversation")
        .order_by("-conversation__last_activity_at", "conversation_id")
    )
    return _describe(user, memberships)


def conversation_for_member(*, user: User, conversation_id: int) -> dict | None:
    membership = (
        Membership.objects.current()
        .filter(user=user, conversation_id=conversation_id)
        .select_related("conversation")
        .first()
    )
    return _describe(user, [membership])[0] if membership else None


def _describe(user: User, memberships: list[Membership]) -> list[dict]:
    conversation_ids = [m.conversation_id for m in memberships]
    members: dict[int, list[User]] = {cid: [] for cid in conversation_ids}
    admins: dict[int, list[str]] = {cid: [] for cid in conversation_ids}
    for m in (
        Membership.objects.current()
        .filter(conversation_id__in=conversation_ids)
        .select_related("user")
        .order_by("joined_at", "id")
    ):
        members[m.conversation_id].append(m.user)
        if m.is_admin:
            admins[m.conversation_id].append(m.user.public_id)
    result = []
    for membership in memberships:
        conversation: Conversation = membership.conversation
        people = members[conversation.id]
        title = conversation.title
        if conversation.kind == Conversation.Kind.DIRECT:
            other = next((u for u in people if u.id != user.id), user)
            title = other.display_name or other.username
        described = {
            "id": conversation.public_id,
            "kind": conversation.kind,
            "title": title,
            "members": [user_public(u) for u in people],
            "last_seq": conversation.last_seq,
            "read_seq": membership.read_seq,
        }
        if conversation.kind == Conversation.Kind.GROUP:
            described["admins"] = admins[conversation.id]
        result.append(described)
    return result


def conversation_member_ids(*, conversation_id: int) -> list[int]:
    """The user ids of a conversation's current members."""
    return list(
        Membership.objects.current()
        .filter(conversation_id=conversation_id)
        .values_list("user_id", flat=True)
    )


def users_sharing_a_conversation(*, user_id: int) -> set[int]:
    """Everyone who is a current member of some conversation with this user (contacts)."""
    mine = Membership.objects.current().filter(user_id=user_id).values("conversation_id")
    return set(
        Membership.objects.current()
        .filter(conversation_id__in=mine)
        .exclude(user_id=user_id)
        .values_list("user_id", flat=True)
    )


def message_receipts(*, user: User, message_id: int) -> dict | None:
    """Per-member delivery and read state of a message, for its sender only."""
    message = Message.objects.filter(id=message_id, sender_user=user).first()
    if message is None:
        return None
    rows = (
        Receipt.objects.filter(message=message)
        .order_by("user_id")
        .values_list("user_id", "delivered_at", "read_at", "expired_at")
    )
    return {
        "message_id": message.public_id,
        "conversation": ids.encode(ids.CONVERSATION, message.conversation_id),
        "seq": message.seq,
        "receipts": [
            {
                "user": ids.encode(ids.USER, user_id),
                "delivered_at": _iso(delivered),
                "read_at": _iso(read),
                "expired_at": _iso(expired),
            }
            for user_id, delivered, read, expired in rows
        ],
    }


def _iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def conversation_devices(*, user: User, conversation_id: int) -> dict | None:
    """The devices a send to this conversation is encrypted for, with their identity keys.

    Every active device of the current members that has published keys, the
    caller's own included (a client skips itself). None for a non-member.
    """
    membership = (
        Membership.objects.current()
        .filter(user=user, conversation_id=conversation_id)
        .select_related("conversation")
        .first()
    )
    if membership is None:
        return None
    members = Membership.objects.current().filter(conversation_id=conversation_id).values("user_id")
    devices = (
        Device.objects.active()
        .filter(user_id__in=members, identity_key__isnull=False)
        .order_by("user_id", "created_at")
        .values_list("user_id", "id", "identity_key")
    )
    return {
        "conversation": membership.conversation.public_id,
        "kind": membership.conversation.kind,
        "devices": [
            {
                "user": ids.encode(ids.USER, user_id),
                "device": ids.encode(ids.DEVICE, device_id),
                "identity_key": base64.b64encode(bytes(key)).decode(),
            }
            for user_id, device_id, key in devices
        ],
    }


# --- Staff: delivery traces and stuck inboxes (the admin; never a body) ---------------


def message_trace(*, message: Message) -> dict:
    """Where a message stands: stored, fanned out, pushed, acked, read, with times.

    Built from what the server keeps anyway: the message row, its inbox rows (one
    per device until that device acks), the devices' last push marks, and the
    per-recipient receipts. Reads no body.
    """
    from apps.messaging import delivery

    rows = list(
        InboxEntry.objects.filter(message_id=message.id)
        .order_by("device_id")
        .values_list("device_id", "cursor", "created_at", "envelope")
    )
    receipts = list(
        Receipt.objects.filter(message_id=message.id)
        .order_by("user_id")
        .values_list("user_id", "delivered_at", "read_at", "expired_at")
    )
    recipients = [r[0] for r in receipts]
    devices = list(
        Device.objects.filter(user_id__in=[*recipients, message.sender_user_id])
        .exclude(id=message.sender_device_id)
        .select_related("user")
        .order_by("user_id", "created_at")
    )
    waiting = {device_id: (cursor, at, envelope) for device_id, cursor, at, envelope in rows}
    marks = delivery.pushed_marks(d.id for d in devices)
    group = (
        message.group_body is not None
        or message.fanout_pending
        or any(envelope == "group" for *_, envelope in rows)
    )
    if message.fanout_pending:
        fanout = {"state": "pending", "at": None}
    elif group:
        written = [at for _, _, at, envelope in rows if envelope == "group"]
        fanout = {"state": "done", "at": min(written) if written else None}
    else:
        fanout = {"state": "with the message", "at": message.created_at}
    device_rows = []
    for device in devices:
        mark = marks.get(device.id)
        row = waiting.get(device.id)
        if row is not None:
            cursor, at, _ = row
            pushed = mark is not None and mark[0] >= cursor
            state = "pushed, not acked" if pushed else "waiting to be pushed"
        elif device.created_at > message.created_at:
            state, cursor, at, pushed = "joined after the message", None, None, False
        elif device.revoked_at is not None:
            state, cursor, at, pushed = "revoked (its inbox was dropped)", None, None, False
        else:
            state, cursor, at, pushed = "acked (no copy left)", None, None, False
        device_rows.append(
            {
                "device": device,
                "state": state,
                "cursor": cursor,
                "waiting_since": at,
                "pushed_at": mark[1] if pushed else None,
                "pushed_via": mark[2] if pushed else None,
                "last_push": mark,
            }
        )
    return {
        "stored_at": message.created_at,
        "fanout": fanout,
        "recipients": [
            {"user_id": u, "delivered_at": d, "read_at": r, "expired_at": e}
            for u, d, r, e in receipts
        ],
        "devices": device_rows,
        "waiting": len(rows),
    }


def devices_with_inbox_age(queryset):
    """Annotate devices with their oldest undelivered event's time and how many wait.

    The oldest is the lowest cursor (cursors only grow), read on the (device, cursor)
    index; no body is read.
    """
    from django.db.models import Count, OuterRef, Subquery

    rows = InboxEntry.objects.filter(device_id=OuterRef("pk"))
    return queryset.annotate(
        inbox_oldest=Subquery(rows.order_by("cursor").values("created_at")[:1]),
        inbox_waiting=Subquery(
            rows.order_by().values("device_id").annotate(n=Count("id")).values("n")[:1]
        ),
    )
