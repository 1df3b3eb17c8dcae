"""The long-poll transport: GET /api/v1/events in a loop, sends and reads over REST."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import httpx

from ..errors import ApiError, RateLimited
from ..http import RETRYABLE_STATUS, NatterHttp
from ..wire import log
from .base import Connection


class LongPollConnection(Connection):
    """An inbox over GET /api/v1/events; sends and reads go through REST with retries."""

    def __init__(
        self,
        http: NatterHttp,
        *,
        poll_timeout: float = 25.0,
        limit: int = 200,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.http = http
        self.poll_timeout = poll_timeout
        self.limit = limit

    async def start(self) -> None:
        await self._poll(0)  # an immediate first page: a bad token fails here, not later
        self._spawn(self._run())

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        await self._stop_tasks()
        if self._ack_target > self._acked:
            with contextlib.suppress(httpx.HTTPError, ApiError, RuntimeError):  # pool closed
                await self.http.request(
                    "POST", "/api/v1/events/ack", json={"cursor": self._ack_target}, timeout=2
                )
        self._finish()

    async def subscribe_presence(self, user_ids: list[str]) -> None:
        """Watch these users (replaces the set, at most 100); snapshots come as ephemeral."""
        answer = await self.http.request(
            "PUT", "/api/v1/presence/subscriptions", json={"user_ids": list(user_ids)}
        )
        for notice in answer.get("presence", []):
            self._put_ephemeral(notice)

    async def typing(self, conversation: str, state: str = "composing") -> None:
        """Tell the conversation's other members you are typing (or stopped); never retried."""
        await self.http.request(
            "POST", "/api/v1/typing", json={"conversation": conversation, "state": state}
        )

    async def _poll(self, timeout: float) -> tuple[int, int]:
        """Fetch one page (acking everything up to our ack target); return (new, total)."""
        cursor = self._ack_target
        page = await self.http.request(
            "GET",
            "/api/v1/events",
            params={"cursor": cursor, "timeout": timeout, "limit": self.limit},
            timeout=timeout + self.http.timeout,
        )
        self._acked = max(self._acked, cursor)
        items = page.get("events") or []
        new = sum(self._deliver(item.get("cursor"), item.get("event")) for item in items)
        for notice in page.get("ephemeral") or []:
            self._put_ephemeral(notice)
        has_more = page.get("has_more")
        if has_more is None:  # older servers: a short page means the backlog is done
            has_more = len(items) >= self.limit
        if not has_more:
            self._drained.set()
        return new, len(items)

    async def _run(self) -> None:
        while not self._finished():
            if self.auto_ack:
                # The poll's cursor is our ack, so let the application take what it has first.
                await self._wait_progress(lambda: self._taken >= self._received)
            try:
                new, total = await self._poll(self.poll_timeout)
            except RateLimited as exc:
                await asyncio.sleep(exc.retry_after or self._backoff.next())
                continue
            except ApiError as exc:
                if exc.status not in RETRYABLE_STATUS:
                    self._fail(exc)
                    return
                await asyncio.sleep(self._backoff.next())
                continue
            except httpx.TransportError as exc:
                log.info("poll failed: %r", exc)
                await asyncio.sleep(self._backoff.next())
                continue
            self._backoff.reset()
            if total and not new:
                # Only rows the application holds unacked (auto_ack=False): wait, don't spin.
                self._progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), 1.0)

    async def _wait_progress(self, done: Callable[[], bool]) -> None:
        while not done() and not self._finished():
            self._progress.clear()
            await self._progress.wait()

    async def _submit(
        self, type: str, payload: dict[str, Any], frame_id: str, deadline: float | None
    ) -> dict[str, Any]:
        self._raise_if_done()
        path = "/api/v1/messages" if type == "send" else f"/api/v1/{type}"
        return await self.http.request_until_answered(
            "POST", path, json=payload, attempt_timeout=self.ack_timeout, deadline=deadline
        )

    async def _push_ack(self) -> None:
        target = self._ack_target
        if not self.auto_ack and target > self._acked:
            await self.http.request_until_answered(
                "POST",
                "/api/v1/events/ack",
                json={"cursor": target},
                attempt_timeout=self.ack_timeout,
            )
            self._acked = max(self._acked, target)
