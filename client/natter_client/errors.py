"""Exceptions of the Natter client: one family, each carrying the protocol's error code."""

from __future__ import annotations

from typing import Any


class NatterError(Exception):
    """Base of every error this package raises on purpose."""


class ApiError(NatterError):
    """An error answer of the server, from REST (with a status) or a WebSocket error frame."""

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.status = status
        self.code = code
        self.message = message
        # The fields beside code and message (missing/extra, retry_after, max_bytes...).
        self.details = details or {}
        # Set by send() so the caller can resend the very same message after fixing the cause.
        self.client_id: str | None = None


class DeviceMismatch(ApiError):
    """The ciphertexts did not cover exactly the active devices; resend with the same client_id."""

    @property
    def missing(self) -> list[str]:
        return list(self.details.get("missing") or [])

    @property
    def extra(self) -> list[str]:
        return list(self.details.get("extra") or [])


class RateLimited(ApiError):
    """The server asked us to slow down for `retry_after` seconds."""

    @property
    def retry_after(self) -> float | None:
        value = self.details.get("retry_after")
        return float(value) if value is not None else None


class Unauthenticated(ApiError):
    """The token is missing, wrong or revoked; reconnecting cannot help."""


class ConnectionRejected(NatterError):
    """The server closed the WebSocket with a code that forbids an automatic reconnect."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed by server: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class ConnectedElsewhere(ConnectionRejected):
    """Another socket of this device took over the inbox (close code 4409)."""


class AbuseClosed(ConnectionRejected):
    """The server closed the socket for repeated bad frames (close code 4429)."""


class ConnectionClosed(NatterError):
    """The connection was closed by the application while an operation waited on it."""


_BY_CODE: dict[str, type[ApiError]] = {
    "device_mismatch": DeviceMismatch,
    "rate_limited": RateLimited,
    "unauthenticated": Unauthenticated,
    "not_authenticated": Unauthenticated,
    "authentication_failed": Unauthenticated,
}


def api_error(
    status: int | None, code: str, message: str = "", details: dict[str, Any] | None = None
) -> ApiError:
    """Build the most specific ApiError for a code so callers can catch by class."""
    cls = _BY_CODE.get(code)
    if cls is None and status == 401:
        cls = Unauthenticated
    if cls is None and status == 429:
        cls = RateLimited
    return (cls or ApiError)(status, code, message, details)


def api_error_from_payload(status: int | None, payload: Any) -> ApiError:
    """Turn a REST body or a WebSocket error frame into an ApiError, tolerating odd shapes."""
    body = payload.get("error", payload) if isinstance(payload, dict) else None
    if not isinstance(body, dict):
        return api_error(status, f"http_{status}", str(payload)[:200])
    reserved = {"code", "message", "type", "ref"}
    details = {k: v for k, v in body.items() if k not in reserved}
    code = str(body.get("code") or f"http_{status}")
    return api_error(status, code, str(body.get("message", "")), details)
