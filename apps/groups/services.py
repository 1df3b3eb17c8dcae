"""Groups: membership changes as ordered `group` events (PROTOCOL §3).

A group is a conversation of kind `group`. Every change takes the next seq of the
conversation (under its row lock, like a message), updates the memberships and puts
one `group` event into the inbox of every device of the members at that seq, the
member who is removed or leaves included, as their last event of the group.
"""

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from apps.accounts.models import Device, User
from apps.common import ids
from apps.common.errors import BadRequest, Forbidden, NatterError, NotFound, NotMember
from apps.messaging.models import Conversation, InboxEntry, Membership, Message
from apps.messaging.services import conversation_next_seq, inbox_append, message_fanout


class GroupFull(NatterError):
    code = "group_full"
    status = 409
    message = "The group is full."

    def __init__(self, *, max_members: int):
        super().__init__(f"A group has at most {max_members} members.", max_members=max_members)


class NotAdmin(Forbidden):
    code = "not_admin"
    message = "Only the group's admins may do this."


def group_create(*, creator: User, title: str, member_ids: list[int]) -> Conversation:
    """Create a group with its creator as first admin; everyone gets `created`."""
    title = _clean_title(title)
    wanted = [uid for uid in dict.fromkeys(member_ids) if uid != creator.id]
    _check_users_exist(wanted)
    _check_size(1 + len(wanted))
    with transaction.atomic():
        group = Conversation.objects.create(kind=Conversation.Kind.GROUP, title=title)
        seq = conversation_next_seq(group.id)
        Membership.objects.bulk_create(
            [Membership(conversation=group, user=creator, is_admin=True, joined_seq=seq)]
            + [Membership(conversation=group, user_id=uid, joined_seq=seq) for uid in wanted]
        )
        _announce(group, seq, "created", actor_id=creator.id, user_ids=[creator.id, *wanted])
    return group


def group_rename(*, group_id: int, actor: User | None, title: str) -> Conversation:
    title = _clean_title(title)
    with transaction.atomic():
        group, seq = _locked_group(group_id, actor)
        group.title = title
        group.save(update_fields=["title"])
        _announce(group, seq, "renamed", actor_id=_actor_id(actor), user_ids=[])
    return group


def group_members_add(*, group_id: int, actor: User | None, user_ids: list[int]) -> Conversation:
    """Add users (admins only); members already in are ignored."""
    wanted = list(dict.fromkeys(user_ids))
    _check_users_exist(wanted)
    with transaction.atomic():
        group, seq = _locked_group(group_id, actor)
        current = set(_current_member_ids(group.id))
        new = [uid for uid in wanted if uid not in current]
        if not new:
            transaction.set_rollback(True)  # nothing changes: give the seq back
            return group
        _check_size(len(current) + len(new))
        past = set(
            Membership.objects.filter(conversation=group, user_id__in=new).values_list(
                "user_id", flat=True
            )
        )
        # Someone who left and comes back reuses their row: a fresh join at this seq.
        Membership.objects.filter(conversation=group, user_id__in=past).update(
            left_seq=None, joined_seq=seq, is_admin=False, read_seq=seq - 1, delivered_seq=seq - 1
        )
        Membership.objects.bulk_create(
            [
                Membership(
                    conversation=group,
                    user_id=uid,
                    joined_seq=seq,
                    read_seq=seq - 1,
                    delivered_seq=seq - 1,
                )
                for uid in new
                if uid not in past
            ]
        )
        _announce(group, seq, "added", actor_id=_actor_id(actor), user_ids=new)
    return group


def group_member_remove(*, group_id: int, actor: User | None, user_id: int) -> Conversation:
    """Remove a member (admins only); removing yourself is leaving."""
    if actor is not None and actor.id == user_id:
        return group_leave(group_id=group_id, user=actor)
    with transaction.atomic():
        group, seq = _locked_group(group_id, actor)
        if user_id not in _current_member_ids(group.id):
            raise NotFound("This user is not a member of the group.")
        _depart(group, seq, user_id, action="removed", actor_id=_actor_id(actor))
    return group


def group_leave(*, group_id: int, user: User) -> None:
    """Leave a group; if the last admin leaves, the longest-standing member becomes admin."""
    with transaction.atomic():
        group, seq = _locked_group(group_id, user, admin_only=False)
        _depart(group, seq, user.id, action="left", actor_id=user.id)


def group_admin_promote(*, group_id: int, actor: User | None, user_id: int) -> Conversation:
    with transaction.atomic():
        group, seq = _locked_group(group_id, actor)
        updated = (
            Membership.objects.current()
            .filter(conversation=group, user_id=user_id)
            .update(is_admin=True)
        )
        if not updated:
            raise NotFound("This user is not a member of the group.")
        _announce(group, seq, "promoted", actor_id=_actor_id(actor), user_ids=[user_id])
    return group


# --- internals -----------------------------------------------------------------------


def _locked_group(group_id: int, actor: User | None, *, admin_only: bool = True):
    """Lock the group by taking its next seq; check the actor (None: staff in the admin)."""
    group = Conversation.objects.filter(id=group_id, kind=Conversation.Kind.GROUP).first()
    if group is None:
        raise NotMember()
    _check_actor(group, actor, admin_only)  # fail fast, before queueing on the lock
    seq = conversation_next_seq(group.id)
    # Checked again under the lock: a demotion or removal may have just committed.
    _check_actor(group, actor, admin_only)
    group.refresh_from_db(fields=["last_seq", "title"])
    return group, seq


def _check_actor(group: Conversation, actor: User | None, admin_only: bool) -> None:
    if actor is None:
        return
    membership = Membership.objects.current().filter(conversation=group, user=actor).first()
    if membership is None:
        raise NotMember()
    if admin_only and not membership.is_admin:
        raise NotAdmin()


def _depart(group: Conversation, seq: int, user_id: int, *, action: str, actor_id) -> None:
    # Fan out what is still pending first, so the departing member's last event of
    # the group is really this one, in cursor order too, not only in seq order.
    for message_id in Message.objects.filter(conversation=group, fanout_pending=True).values_list(
        "id", flat=True
    ):
        message_fanout(message_id=message_id)
    leaving = Membership.objects.current().get(conversation=group, user_id=user_id)
    leaving.left_seq = seq
    was_admin = leaving.is_admin
    leaving.is_admin = False
    leaving.save(update_fields=["left_seq", "is_admin"])
    # The departing member gets this event as its last of the group.
    _announce(group, seq, action, actor_id=actor_id, user_ids=[user_id], also=[user_id])
    remaining = Membership.objects.current().filter(conversation=group)
    if was_admin and not remaining.filter(is_admin=True).exists():
        heir = remaining.order_by("joined_seq", "joined_at", "id").first()
        if heir is not None:
            heir.is_admin = True
            heir.save(update_fields=["is_admin"])
            promoted_seq = conversation_next_seq(group.id)
            _announce(group, promoted_seq, "promoted", actor_id=None, user_ids=[heir.user_id])


def _announce(group, seq, action, *, actor_id, user_ids, also=()) -> None:
    payload = {
        "type": "group",
        "conversation": group.public_id,
        "seq": seq,
        "action": action,
        "actor": ids.encode(ids.USER, actor_id) if actor_id else None,
        "user_ids": [ids.encode(ids.USER, u) for u in user_ids],
        "title": group.title,
    }
    audience = Q(user_id__in=_current_member_ids(group.id)) | Q(user_id__in=list(also))
    devices = Device.objects.active().filter(audience).values_list("id", flat=True)
    inbox_append(
        [InboxEntry(device_id=d, type=InboxEntry.Type.GROUP, payload=payload) for d in devices]
    )


def _current_member_ids(group_id: int) -> list[int]:
    return list(
        Membership.objects.current()
        .filter(conversation_id=group_id)
        .values_list("user_id", flat=True)
    )


def _actor_id(actor: User | None):
    return actor.id if actor is not None else None


def _check_users_exist(user_ids: list[int]) -> None:
    found = set(User.objects.filter(id__in=user_ids, is_active=True).values_list("id", flat=True))
    unknown = [ids.encode(ids.USER, u) for u in user_ids if u not in found]
    if unknown:
        raise BadRequest("Some users do not exist.", field="user_ids", unknown=unknown)


def _check_size(count: int) -> None:
    limit = settings.NATTER["GROUP_MAX_MEMBERS"]
    if count > limit:
        raise GroupFull(max_members=limit)


def _clean_title(title: str) -> str:
    title = (title or "").strip()
    if not title:
        raise BadRequest("A group needs a title.", field="title")
    return title[:200]
