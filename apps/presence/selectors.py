"""Reads of presence: who a watcher may see, who hears a typing notice, the registry."""

import time

from django.conf import settings

from apps.accounts.models import Device, User
from apps.common.errors import NotMember
from apps.messaging.models import Membership
from apps.presence.store import get_store


def contacts_among(*, user_id: int, user_ids) -> set[int]:
    """Those of `user_ids` who share a current conversation with `user_id`.

    The definition of `users_sharing_a_conversation`, narrowed to the ids asked
    about, so a user in many large groups does not load every member.
    """
    mine = Membership.objects.current().filter(user_id=user_id).values("conversation_id")
    return set(
        Membership.objects.current()
        .filter(conversation_id__in=mine, user_id__in=list(user_ids))
        .exclude(user_id=user_id)
        .values_list("user_id", flat=True)
        .distinct()
    )


def presence_people(*, watcher_id: int, user_ids) -> dict[int, dict]:
    """Visibility, last_seen and contact-ness of each existing, active user asked about."""
    ids = list(user_ids)
    contacts = contacts_among(user_id=watcher_id, user_ids=ids)
    return {
        uid: {
            "visibility": visibility,
            "last_seen": last_seen,
            "contact": uid in contacts,
        }
        for uid, visibility, last_seen in User.objects.filter(
            id__in=ids, is_active=True
        ).values_list("id", "last_seen_visibility", "last_seen")
    }


def visibilities(*, user_ids) -> dict[int, str]:
    return dict(
        User.objects.filter(id__in=list(user_ids)).values_list("id", "last_seen_visibility")
    )


def typing_audience(*, user_id: int, conversation_id: int) -> list[int] | None:
    """Active devices of the other current members; None when the chat is too big to tell.

    Raises NotMember (404) for a conversation the user is not in, like every
    other conversation-scoped call.
    """
    members = set(
        Membership.objects.current()
        .filter(conversation_id=conversation_id)
        .values_list("user_id", flat=True)
    )
    if user_id not in members:
        raise NotMember()
    if len(members) > settings.NATTER["TYPING_MAX_MEMBERS"]:
        return None
    members.discard(user_id)
    return list(Device.objects.active().filter(user_id__in=members).values_list("id", flat=True))


def registry_processes() -> list[dict]:
    """Every live server process with its number of connected devices (admin)."""
    now = time.time()
    return [
        {"process": process, "devices": count, "expires_in": round(expiry - now)}
        for process, count, expiry in sorted(get_store().processes(now=now))
    ]


def registry_devices(*, user_id: int | None = None, process: str | None = None) -> list[dict]:
    """Connected devices of a user or of a process, with their owners (admin)."""
    now = time.time()
    store = get_store()
    if user_id is not None:
        entries = store.devices_of_user(user_id=user_id, now=now)
    else:
        entries = store.devices_on_process(process=process, now=now, limit=500)
    devices = Device.objects.select_related("user").in_bulk([e["device_id"] for e in entries])
    rows = []
    for entry in entries:
        device = devices.get(entry["device_id"])
        rows.append(
            {
                **entry,
                "device": device,
                "since": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry["since"])),
                "expires_in": round(entry["expires_at"] - now),
            }
        )
    return sorted(rows, key=lambda r: r["since"])
