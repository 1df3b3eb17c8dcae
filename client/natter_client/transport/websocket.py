"""The WebSocket transport: pushed events, acked sends, heartbeats, reconnect and resume."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.typing import Origin

from ..errors import (
    AbuseClosed,
    ConnectedElsewhere,
    ConnectionClosed,
    ConnectionRejected,
    NatterError,
    Unauthenticated,
    api_error_from_payload,
)
from ..wire import log
from .base import Connection


class WebSocketConnection(Connection):
    """An inbox over /ws/v1/: pushed events, acked sends, heartbeats, reconnect and resume."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        origin: str,
        open_timeout: float = 10.0,
        on_hello: Callable[[dict[str, Any]], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.origin = origin
        self.open_timeout = open_timeout
        self.hello: dict[str, Any] | None = None
        self._token = token
        self._on_hello = on_hello
        self._ws: websockets.ClientConnection | None = None
        self._up = False
        self._down = asyncio.Event()  # set when the current socket is gone
        self._changed: asyncio.Future[None] | None = None  # resolved when up/finished changes
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._last_heard = 0.0

    async def start(self) -> None:
        await self._open()
        self._spawn(self._run())
        self._spawn(self._acker())

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        # Flush the last ack so what the application already has is not pushed again.
        with contextlib.suppress(WsClosed, TimeoutError):
            async with asyncio.timeout(2):
                await self._push_ack()
        await self._stop_tasks()
        if self._ws is not None:
            await self._ws.close()
        self._up = False
        self._drop_pending()
        self._finish()

    def send_frame(self, frame: dict[str, Any]) -> None:
        """Fire an ephemeral frame (typing, presence.subscribe); never retried, by design."""
        if not self._up or self._ws is None:
            raise ConnectionClosed("not connected")
        self._spawn(self._send_quietly(self._ws, json.dumps(frame)))

    async def subscribe_presence(self, user_ids: list[str]) -> None:
        """Watch these users (replaces the set, at most 100); snapshots come as ephemeral."""
        self.send_frame({"type": "presence.subscribe", "user_ids": list(user_ids)})

    async def typing(self, conversation: str, state: str = "composing") -> None:
        """Tell the conversation's other members you are typing (or stopped); never retried."""
        self.send_frame({"type": "typing", "conversation": conversation, "state": state})

    @staticmethod
    async def _send_quietly(ws: websockets.ClientConnection, text: str) -> None:
        with contextlib.suppress(WsClosed):
            await ws.send(text)

    # -- socket lifecycle --------------------------------------------------------------------

    async def _open(self) -> None:
        """Open a socket and read its hello; raise a rejection if the server refuses us."""
        try:
            ws = await websockets.connect(
                self.url,
                additional_headers={"Authorization": f"Bearer {self._token}"},
                origin=Origin(self.origin),
                open_timeout=self.open_timeout,
                # Our own ping frames are the heartbeat the server counts; ciphertext does not
                # compress, so deflate would only cost CPU.
                ping_interval=None,
                compression=None,
                close_timeout=2,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                message = f"WebSocket handshake refused with HTTP {status} (token or Origin)"
                raise Unauthenticated(status, "unauthenticated", message) from exc
            raise
        try:
            async with asyncio.timeout(self.open_timeout):
                hello = json.loads(await ws.recv())
            if not isinstance(hello, dict) or hello.get("type") != "hello":
                raise NatterError(f"expected hello, got {hello!r:.200}")
        except WsClosed as exc:
            raise _rejection(ws.close_code, ws.close_reason) or exc from None
        except BaseException:
            await ws.close()
            raise
        self._ws, self.hello, self._up = ws, hello, True
        self._down = asyncio.Event()
        self._last_heard = asyncio.get_running_loop().time()
        # A new socket knows nothing of acks we sent on the old one that may have been lost.
        self._acked = 0
        if self._ack_target:
            self._progress.set()
        if self._on_hello is not None:
            self._on_hello(hello)
        self._announce()

    async def _run(self) -> None:
        """Read frames; when the socket drops, reconnect with backoff until closed or refused."""
        loop = asyncio.get_running_loop()
        while True:
            ws, opened = self._ws, loop.time()
            assert ws is not None
            interval = float((self.hello or {}).get("heartbeat_s") or 30)
            heartbeat = asyncio.create_task(self._heartbeat(ws, interval))
            try:
                await self._read(ws)
            finally:
                heartbeat.cancel()
                self._up = False
                self._down.set()
                self._drop_pending()
            if self._closing:
                return
            rejection = _rejection(ws.close_code, ws.close_reason)
            if rejection is not None:
                self._fail(rejection)
                return
            log.info("socket lost (code %s); reconnecting", ws.close_code)
            if loop.time() - opened > self._backoff.cap:
                self._backoff.reset()  # it was healthy; only flapping sockets back off far
            if not await self._reconnect():
                return

    async def _reconnect(self) -> bool:
        """Retry _open with backoff; return False if the server refused us for good."""
        while True:
            await asyncio.sleep(self._backoff.next())
            try:
                await self._open()
                return True
            except (Unauthenticated, ConnectionRejected) as exc:
                self._fail(exc)
                return False
            except (OSError, WebSocketException, TimeoutError, NatterError, ValueError) as exc:
                log.info("reconnect failed: %r", exc)

    async def _read(self, ws: websockets.ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for raw in ws:
                self._last_heard = loop.time()
                try:
                    frame = json.loads(raw)
                except ValueError:
                    log.warning("ignoring non-JSON frame %r", raw[:200])
                    continue
                if isinstance(frame, dict):
                    self._on_frame(frame)
        except WsClosed:
            pass

    def _on_frame(self, frame: dict[str, Any]) -> None:
        match frame.get("type"):
            case "event":
                self._deliver(frame.get("cursor"), frame.get("event"))
            case "drained":
                self._drained.set()
            case "ack" | "ok" | "error" | "pong" as kind:
                key = frame.get("ref")
                if key is None and kind == "ack":
                    key = frame.get("client_id")
                future = self._pending.get(key) if isinstance(key, str) else None
                if future is not None and not future.done():
                    future.set_result(frame)
                elif kind == "error":
                    log.warning("server error frame: %r", frame)
            case "hello":
                pass
            case _:
                self._put_ephemeral(frame)  # typing, presence and whatever comes later

    async def _heartbeat(self, ws: websockets.ClientConnection, interval: float) -> None:
        """Ping at the server's pace; abort a silent socket so the reader reconnects."""
        loop = asyncio.get_running_loop()
        for tick in itertools.count(1):
            await asyncio.sleep(interval / 2)
            if loop.time() - self._last_heard > 2.5 * interval:
                log.warning("no frame for %.0fs; dropping the socket", 2.5 * interval)
                ws.transport.abort()
                return
            if tick % 2 == 0:
                with contextlib.suppress(WsClosed):
                    await ws.send('{"type": "ping"}')

    def _announce(self) -> None:
        """Wake every request waiting for a socket (or for the news that none will come)."""
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    def _finish(self) -> None:
        super()._finish()
        self._announce()

    async def _wait_up(self) -> tuple[websockets.ClientConnection, asyncio.Event]:
        while not (self._up or self._finished()):
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            # Shielded: one waiter timing out must not cancel the future the others share.
            await asyncio.shield(self._changed)
        self._raise_if_done()
        assert self._ws is not None
        return self._ws, self._down

    def _drop_pending(self) -> None:
        """Wake every request waiting on the lost socket so it resends on the next one."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(_SocketLost())
        self._pending.clear()

    # -- requests and acks -------------------------------------------------------------------

    async def _submit(
        self, type: str, payload: dict[str, Any], frame_id: str, deadline: float | None
    ) -> dict[str, Any]:
        """Send a frame until its reply arrives, resending after timeouts and reconnects."""
        text = json.dumps({"type": type, "id": frame_id, **payload})
        loop = asyncio.get_running_loop()
        while True:
            async with asyncio.timeout_at(deadline):
                ws, down = await self._wait_up()
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._pending[frame_id] = future
            try:
                await ws.send(text)
                attempt_end = loop.time() + self.ack_timeout
                async with asyncio.timeout_at(min(attempt_end, deadline or attempt_end)):
                    reply = await future
            except WsClosed:
                await down.wait()  # let the reader notice before we look for the next socket
                continue
            except _SocketLost:
                continue
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    raise
                # The server answers a repeated id with the original result, so resending is safe.
                log.info("no answer to %s %s in %.1fs; resending", type, frame_id, self.ack_timeout)
                continue
            finally:
                if self._pending.get(frame_id) is future:
                    del self._pending[frame_id]
            if reply.get("type") == "error":
                raise api_error_from_payload(None, reply)
            return reply

    async def _push_ack(self) -> None:
        target, ws = self._ack_target, self._ws
        if self._up and ws is not None and target > self._acked:
            with contextlib.suppress(WsClosed):  # _open re-acks on the next socket
                await ws.send(json.dumps({"type": "ack", "cursor": target}))
                self._acked = max(self._acked, target)

    async def _acker(self) -> None:
        """Tell the server how far the application got, one frame per burst of events."""
        while not self._finished():
            await self._progress.wait()
            self._progress.clear()
            await self._push_ack()


class _SocketLost(Exception):
    """The socket a request waited on went away; resend on the next one."""


def _rejection(code: int | None, reason: str) -> NatterError | None:
    """Map a close code that forbids reconnecting to the error the application should see."""
    if code == 4401:
        return Unauthenticated(None, "unauthenticated", reason or "token missing or revoked")
    if code == 4409:
        return ConnectedElsewhere(code, reason or "connected elsewhere")
    if code == 4429:
        return AbuseClosed(code, reason or "too many bad frames")
    return None
