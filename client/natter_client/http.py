"""REST access to the Natter server: JSON in, JSON out, error bodies turned into exceptions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .errors import ApiError, RateLimited, api_error_from_payload
from .wire import Backoff, log

# Statuses that say "not now" rather than "no": an idempotent request may be repeated.
RETRYABLE_STATUS = frozenset({502, 503, 504})


class NatterHttp:
    """A thin async REST client bound to one server and, after login, one device token."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._client = client or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._owns_client = client is None

    async def aclose(self) -> None:
        """Close the connection pool if we created it."""
        if self._owns_client:
            await self._client.aclose()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request and return its JSON body (None for 204); raise ApiError otherwise."""
        response = await self._client.request(
            method,
            self.base_url + path,
            json=json,
            params=params,
            headers=self._headers(),
            timeout=timeout if timeout is not None else self.timeout,
        )
        return self._answer(response)

    async def upload(
        self,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        length: int,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """POST a body streamed from `chunks` (exactly `length` bytes); return the JSON answer."""
        headers = {
            **self._headers(),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
        }
        response = await self._client.post(
            self.base_url + path,
            content=chunks,
            params=params,
            headers=headers,
            timeout=httpx.Timeout(self.timeout, write=None, read=max(self.timeout, 60.0)),
        )
        return self._answer(response)

    async def send_part(self, path: str, offset: int, data: bytes) -> Any:
        """PATCH one part of a resumable upload at `offset`."""
        headers = {**self._headers(), "Content-Type": "application/octet-stream"}
        response = await self._client.patch(
            self.base_url + path,
            content=data,
            params={"offset": offset},
            headers=headers,
            timeout=httpx.Timeout(self.timeout, write=None, read=max(self.timeout, 60.0)),
        )
        return self._answer(response)

    @contextlib.asynccontextmanager
    async def stream(self, path: str, *, headers: dict[str, str] | None = None):
        """GET a body as a stream; error answers are raised as ApiError before yielding."""
        async with self._client.stream(
            "GET",
            self.base_url + path,
            headers={**self._headers(), **(headers or {})},
            timeout=httpx.Timeout(self.timeout, read=max(self.timeout, 60.0)),
        ) as response:
            if not response.is_success:
                await response.aread()
                self._answer(response)
            yield response

    @staticmethod
    def _answer(response: httpx.Response) -> Any:
        if response.is_success:
            if response.status_code == 204 or not response.content:
                return None
            return response.json()
        try:
            payload: Any = response.json()
        except ValueError:
            payload = response.text
        error = api_error_from_payload(response.status_code, payload)
        if isinstance(error, RateLimited) and "retry_after" not in error.details:
            header = response.headers.get("Retry-After")
            if header and header.replace(".", "", 1).isdigit():
                error.details["retry_after"] = float(header)
        raise error

    async def request_until_answered(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        attempt_timeout: float | None = None,
        deadline: float | None = None,
        backoff: Backoff | None = None,
    ) -> Any:
        """Repeat an idempotent request through network errors and 502/503/504 until answered.

        `deadline` is on the event loop's clock (loop.time()); past it TimeoutError is raised.
        """
        backoff = backoff or Backoff()
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await self.request(method, path, json=json, timeout=attempt_timeout)
            except httpx.TransportError as exc:
                failure: Exception = exc
            except ApiError as exc:
                if exc.status not in RETRYABLE_STATUS:
                    raise
                failure = exc
            delay = backoff.next()
            if deadline is not None and loop.time() + delay > deadline:
                raise TimeoutError(f"{method} {path} not answered in time") from failure
            log.info("retrying %s %s in %.2fs after %r", method, path, delay, failure)
            await asyncio.sleep(delay)
