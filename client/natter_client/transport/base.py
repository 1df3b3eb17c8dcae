"""The transport-independent half of a connection to a device's inbox."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Self

from ..errors import ApiError, ConnectionClosed, NatterError
from ..wire import (
    Backoff,
    Ciphertexts,
    Dedup,
    Event,
    SendAck,
    decode_event,
    log,
    new_client_id,
    send_payload,
)

EPHEMERAL_BACKLOG = 1000


class Connection:
    """The transport-independent half: event queue, de-duplication, acks, drained, resends.

    Auto-ack: an event counts as delivered once `next_event()` (or `events()`) has handed it
    to the application, so its cursor is acknowledged right then (coalesced into one ack
    frame per burst). An application that may crash while handling an event and wants it
    redelivered uses `auto_ack=False` and calls `ack(cursor)` itself.
    """

    def __init__(
        self,
        *,
        auto_ack: bool = True,
        ack_timeout: float = 10.0,
        backoff: Backoff | None = None,
        dedup: Dedup | None = None,
    ) -> None:
        self.auto_ack = auto_ack
        self.ack_timeout = ack_timeout
        self._backoff = backoff or Backoff()
        self._seen = dedup or Dedup()  # message_ids handed to the application
        self._cursors = Dedup()  # cursors received, to drop rows the server pushes again
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()  # None means "stop"
        self._ephemeral: asyncio.Queue[dict[str, Any]] = asyncio.Queue(EPHEMERAL_BACKLOG)
        self._drained = asyncio.Event()
        self._progress = asyncio.Event()  # the application took or acked something
        self._received = 0  # highest cursor put in the queue
        self._taken = 0  # highest cursor the application has been handed (or skipped)
        self._ack_target = 0  # highest cursor the server should be told about
        self._acked = 0  # highest cursor the server has been told about
        self._failure: NatterError | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._frame_ids = itertools.count(1)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect once, failing fast; later losses are repaired in the background."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Flush the last ack and stop; pending sends raise ConnectionClosed."""
        raise NotImplementedError

    # -- receiving ---------------------------------------------------------------------------

    @property
    def error(self) -> NatterError | None:
        """The error that ended the connection for good (4401, 4409...), if any."""
        return self._failure

    @property
    def ack_cursor(self) -> int:
        """The cursor up to which this connection acknowledges (sent, or about to be)."""
        return self._ack_target

    @property
    def drained(self) -> bool:
        """True once the backlog waiting at connect time is in the queue."""
        return self._drained.is_set()

    async def wait_drained(self, timeout: float | None = None) -> None:
        """Wait until the offline backlog has been received (not necessarily consumed)."""
        async with asyncio.timeout(timeout):
            await self._drained.wait()

    async def next_event(self, timeout: float | None = None, *, type: str | None = None) -> Event:
        """Return the next event not seen before, optionally the next one of a given type.

        Skipped events (duplicates, other types) still count as taken, so auto-ack covers them.
        Raises TimeoutError, ConnectionClosed after aclose(), or the error that ended the
        connection (Unauthenticated, ConnectedElsewhere...) once the queue is empty.
        """
        async with asyncio.timeout(timeout):
            while True:
                event = await self._queue.get()
                if event is None:
                    self._queue.put_nowait(None)  # so every other waiter stops too
                    raise self._failure or ConnectionClosed("connection closed")
                self._taken = max(self._taken, event.cursor)
                if self.auto_ack:
                    self._ack_target = max(self._ack_target, event.cursor)
                self._progress.set()
                if not self._is_new(event):
                    continue
                if type is None or event.type == type:
                    return event

    async def events(self, *, type: str | None = None) -> AsyncIterator[Event]:
        """Iterate over new events until aclose(); a connection-ending error is raised."""
        while True:
            try:
                event = await self.next_event(type=type)
            except ConnectionClosed:
                return
            yield event

    async def ack(self, cursor: int) -> None:
        """Acknowledge every event up to cursor (needed only with auto_ack=False)."""
        self._ack_target = max(self._ack_target, cursor)
        self._progress.set()
        await self._push_ack()

    async def next_ephemeral(self, timeout: float | None = None) -> dict[str, Any]:
        """Return the next typing/presence notice; these are never stored, so old ones drop."""
        async with asyncio.timeout(timeout):
            return await self._ephemeral.get()

    def _is_new(self, event: Event) -> bool:
        if event.type != "message" or not event.get("message_id"):
            return True
        return self._seen.first_time(str(event["message_id"]))

    def _deliver(self, cursor: Any, event: Any) -> bool:
        """Queue an inbox event unless its cursor was already received; return True if queued."""
        if not isinstance(cursor, int) or not isinstance(event, dict):
            log.warning("ignoring malformed event %r at cursor %r", event, cursor)
            return False
        # A cursor seen before is the server re-pushing a row we have not acked yet (after a
        # reconnect, or a re-poll). A set rather than "≤ highest" keeps a late commit with a
        # lower cursor from being mistaken for a repeat.
        if not self._cursors.first_time(str(cursor)):
            return False
        self._received = max(self._received, cursor)
        self._queue.put_nowait(Event(cursor, decode_event(event)))
        return True

    def _put_ephemeral(self, notice: dict[str, Any]) -> None:
        if self._ephemeral.full():
            self._ephemeral.get_nowait()
        self._ephemeral.put_nowait(notice)

    # -- sending -----------------------------------------------------------------------------

    async def send(
        self,
        conversation: str,
        ciphertexts: Ciphertexts,
        *,
        kind: str = "text",
        envelope: str = "message",
        group_body: bytes | None = None,
        reply_to_seq: int | None = None,
        client_id: str | None = None,
        timeout: float | None = None,
        media_id: str | None = None,
    ) -> SendAck:
        """Send one message, resending with the same client_id until the server acks it.

        Raises the server's definite answer (DeviceMismatch, RateLimited, ApiError...) with
        `client_id` set on it so the caller can resend the same message; TimeoutError after
        `timeout` seconds in total.
        """
        client_id = client_id or new_client_id()
        payload = send_payload(
            client_id=client_id,
            conversation=conversation,
            ciphertexts=ciphertexts,
            kind=kind,
            envelope=envelope,
            group_body=group_body,
            reply_to_seq=reply_to_seq,
            media_id=media_id,
        )
        try:
            answer = await self._submit("send", payload, client_id, self._deadline(timeout))
        except ApiError as exc:
            exc.client_id = client_id
            raise
        return SendAck.from_wire(answer)

    async def read(
        self, conversation: str, up_to_seq: int, *, timeout: float | None = None
    ) -> None:
        """Move this user's read pointer in a conversation (the blue checks)."""
        payload = {"conversation": conversation, "up_to_seq": up_to_seq}
        await self._submit(
            "read", payload, f"read-{next(self._frame_ids)}", self._deadline(timeout)
        )

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return None if timeout is None else asyncio.get_running_loop().time() + timeout

    async def _submit(
        self, type: str, payload: dict[str, Any], frame_id: str, deadline: float | None
    ) -> dict[str, Any]:
        raise NotImplementedError

    async def _push_ack(self) -> None:
        raise NotImplementedError

    # -- lifecycle helpers -------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # A bug in a background task must surface to the application, not vanish.
            log.error("natter background task failed", exc_info=exc)
            self._fail(exc if isinstance(exc, NatterError) else NatterError(repr(exc)))

    async def _stop_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _fail(self, error: NatterError) -> None:
        """End the connection for good with an error the application will see."""
        if self._failure is None and not self._closing:
            log.warning("natter connection ended: %r", error)
            self._failure = error
        self._finish()

    def _finish(self) -> None:
        self._queue.put_nowait(None)
        self._progress.set()

    def _finished(self) -> bool:
        return self._closing or self._failure is not None

    def _raise_if_done(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise ConnectionClosed("connection closed")
