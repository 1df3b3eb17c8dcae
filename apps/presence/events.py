"""Presence changes and typing on the channel layer: the one place presence sends.

Both are ephemeral (PROTOCOL §0.5): at-most-once, never stored, never retried.
A lost presence change is repaired by the next snapshot or long-poll; a lost
typing notice expires on the client after 10 s anyway.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.messaging.events import device_group

logger = logging.getLogger("natter.presence")


def presence_group(user_id: int) -> str:
    """The group every watcher of this user joins, on whatever process it runs."""
    return f"presence.{user_id}"


def presence_message(*, user_id: int, online: bool, last_seen, visibility) -> dict:
    # Raw state: each watcher applies `visibility` itself, since who may see what
    # depends on the watcher (contacts).
    return {
        "type": "presence.changed",
        "user": user_id,
        "online": online,
        "last_seen": last_seen,
        "visibility": visibility,
    }


async def apresence_announce(**state) -> None:
    """Tell every watcher of a user, on every process, that its presence changed."""
    layer = get_channel_layer()
    await layer.group_send(presence_group(state["user_id"]), presence_message(**state))


def presence_announce(**state) -> None:
    try:
        async_to_sync(apresence_announce)(**state)
    except Exception:
        logger.exception("could not announce the presence of user %s", state["user_id"])


async def atyping_notify(*, device_ids, conversation: str, user: str, state: str) -> None:
    """Hand a typing notice to these devices' sockets and waiting long-polls."""
    layer = get_channel_layer()
    message = {"type": "typing.notice", "conversation": conversation, "user": user, "state": state}
    for device_id in device_ids:
        await layer.group_send(device_group(device_id), message)


def typing_notify(**kw) -> None:
    # One async_to_sync around all the sends (STACK-NOTES trap 8).
    async_to_sync(atyping_notify)(**kw)
