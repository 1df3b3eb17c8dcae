"""Presence, typing and heartbeats inside the messaging consumers (PROTOCOL §6).

Mixins, so the socket and the long-poll of `apps.messaging` stay one consumer
each: these parse frames and channel-layer messages and call the services.
"""

import asyncio
import logging
import math
import time
import uuid

from django.conf import settings

from apps.common.errors import OUTAGES
from apps.common.validation import validated
from apps.presence import serializers, services
from apps.presence.events import presence_group

logger = logging.getLogger("natter.ws")

# Silent for 2.5 × heartbeat_s: closed, like HTTP's 408 Request Timeout.
CLOSE_SILENT = 4408


def _typing_frame(message: dict) -> dict:
    return {
        "type": "typing",
        "conversation": message["conversation"],
        "user": message["user"],
        "state": message["state"],
    }


class PresenceSocketMixin:
    """The socket's heartbeat watchdog, registry entry, subscriptions and typing."""

    presence_conn: str | None = None
    watchdog: asyncio.TimerHandle | None = None
    last_frame = 0.0

    async def presence_open(self):
        """Register the socket and start watching for silence (after `hello`)."""
        loop = asyncio.get_running_loop()
        self.presence_conn = uuid.uuid4().hex
        self.presence_since = time.time()
        self.watching: dict[int, services.Watch] = {}
        self.watching_since = loop.time()
        self.composing: dict[int, float] = {}
        self.last_frame = self.touched_at = loop.time()
        self._arm_watchdog()
        try:
            await services.connection_open(
                device=self.device, conn=self.presence_conn, since=self.presence_since
            )
        except OUTAGES:
            # Presence is best effort: messaging goes on; the next heartbeat registers.
            logger.warning("could not register device %s in the registry", self.device.id)
            self.touched_at = -math.inf

    async def presence_heard(self):
        """Any frame is a heartbeat: it resets the silence clock and refreshes the TTL."""
        if self.presence_conn is None:
            return
        loop = asyncio.get_running_loop()
        now = self.last_frame = loop.time()
        lost = False
        if now - self.touched_at >= settings.NATTER["HEARTBEAT_S"] / 2:
            self.touched_at = now
            try:
                lost = await services.connection_heartbeat(
                    device=self.device, conn=self.presence_conn, since=self.presence_since
                )
            except OUTAGES:
                # Never fail the frame this heartbeat came with (a send, say).
                logger.warning("could not refresh device %s in the registry", self.device.id)
        # Presence groups expire in the layer like any other (STACK-NOTES trap 9);
        # re-joining them on every ping would cost two Redis calls per watched user,
        # so only when they are old, or when Redis lost this socket's entry (flushed).
        expiry = getattr(self.channel_layer, "group_expiry", 86400)
        if self.watching and (lost or now - self.watching_since > expiry / 2):
            self.watching_since = now
            for user_id in self.watching:
                await self.channel_layer.group_add(presence_group(user_id), self.channel_name)

    async def presence_close(self):
        """Leave the registry (the user may go offline after the grace period)."""
        conn, self.presence_conn = self.presence_conn, None
        if conn is None:
            return
        if self.watchdog is not None:
            self.watchdog.cancel()
        try:
            await services.connection_close(device=self.device, conn=conn)
            for user_id in self.watching:
                await self.channel_layer.group_discard(presence_group(user_id), self.channel_name)
            now = asyncio.get_running_loop().time()
            composing = [
                c
                for c, at in self.composing.items()
                if now - at < settings.NATTER["TYPING_EXPIRES_S"]
            ]
            if composing:
                await services.atyping_stop(device=self.device, conversation_ids=composing)
        except OUTAGES:
            # The entry expires by itself within the TTL; the sweep announces it.
            logger.warning("could not release device %s from the registry", self.device.id)

    def _arm_watchdog(self):
        limit = 2.5 * settings.NATTER["HEARTBEAT_S"]
        loop = asyncio.get_running_loop()
        self.watchdog = loop.call_at(self.last_frame + limit, self._watchdog_fired)

    def _watchdog_fired(self):
        # One timer per socket, re-armed when it fires, not on every frame.
        self.watchdog = None
        if self.presence_conn is None:
            return
        limit = 2.5 * settings.NATTER["HEARTBEAT_S"]
        if asyncio.get_running_loop().time() - self.last_frame >= limit * 0.999:
            self.silent_close = asyncio.ensure_future(self._close_silent())
        else:
            self._arm_watchdog()

    async def _close_silent(self):
        logger.info("closing the silent socket of device %s", self.device.id)
        await self.close(code=CLOSE_SILENT)
        # Counted offline now, whenever the client's side of the close arrives.
        await self.presence_close()

    # --- client frames ----------------------------------------------------------------

    async def on_presence_subscribe(self, frame, ref):
        data = validated(serializers.PresenceSubscribeSerializer, frame)
        user_ids = list(dict.fromkeys(data["user_ids"]))
        added = [u for u in user_ids if u not in self.watching]
        # Join before reading the snapshot: a change in between is then not lost.
        for user_id in added:
            await self.channel_layer.group_add(presence_group(user_id), self.channel_name)
        try:
            watches = await services.apresence_subscribe(device=self.device, user_ids=user_ids)
        except Exception:
            for user_id in added:
                await self.channel_layer.group_discard(presence_group(user_id), self.channel_name)
            raise
        for user_id in self.watching.keys() - watches.keys():
            await self.channel_layer.group_discard(presence_group(user_id), self.channel_name)
        self.watching = watches
        for user_id, watch in watches.items():
            await self.send_frame(services.presence_frame(user_id, watch))
        if ref is not None:
            await self.send_frame({"type": "ok", "ref": ref})

    async def on_typing(self, frame, ref):
        data = validated(serializers.TypingSerializer, frame)
        await services.atyping_send(
            device=self.device, conversation_id=data["conversation"], state=data["state"]
        )
        if data["state"] == "composing":
            self.composing[data["conversation"]] = asyncio.get_running_loop().time()
        else:
            self.composing.pop(data["conversation"], None)
        if ref is not None:
            await self.send_frame({"type": "ok", "ref": ref})

    PRESENCE_FRAME_HANDLERS = {"presence.subscribe": on_presence_subscribe, "typing": on_typing}

    # --- channel layer ----------------------------------------------------------------

    async def presence_changed(self, message):
        frame = services.watch_apply(
            watcher_id=self.device.user_id, watches=self.watching, message=message
        )
        if frame is not None:
            await self.send_frame(frame)

    async def typing_notice(self, message):
        await self.send_frame(_typing_frame(message))


class PresencePollMixin:
    """A long-poll is a heartbeat; presence changes and typing arriving during its
    wait answer it at once, in `ephemeral`."""

    watches: dict = {}
    presence_groups: list = []

    async def presence_poll_start(self, *, timeout: float) -> None:
        self.ephemeral: list[dict] = []
        self.told: set[int] = set()
        self.presence_groups = []
        try:
            await services.apoll_heartbeat(device=self.device, timeout=timeout)
            # Changes that happened between two polls come with this one.
            self.watches, changed = await services.apoll_watches(device=self.device)
        except OUTAGES:
            logger.warning("presence unavailable for the poll of device %s", self.device.id)
            self.watches, changed = {}, []
        for user_id in changed:
            self.ephemeral.append(services.presence_frame(user_id, self.watches[user_id]))
            self.told.add(user_id)

    async def presence_poll_wait(self) -> None:
        for user_id in self.watches:
            group = presence_group(user_id)
            await self.channel_layer.group_add(group, self.channel_name)
            self.presence_groups.append(group)

    async def presence_poll_answered(self) -> None:
        """Remember what this answer tells the device (before it is sent)."""
        if self.told:
            await services.apoll_watches_told(
                device=self.device, watches=self.watches, user_ids=self.told
            )
            self.told = set()

    async def presence_poll_leave(self) -> None:
        groups, self.presence_groups = self.presence_groups, []
        for group in groups:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def presence_changed(self, message):
        frame = services.watch_apply(
            watcher_id=self.device.user_id, watches=self.watches, message=message
        )
        if frame is not None:
            self.ephemeral.append(frame)
            self.told.add(message["user"])
            await self.answer_ephemeral()

    async def typing_notice(self, message):
        self.ephemeral.append(_typing_frame(message))
        await self.answer_ephemeral()

    async def answer_ephemeral(self):
        """The consumer's hook: answer a waiting poll with the collected notices."""
        raise NotImplementedError("the long-poll consumer answers its own poll")
