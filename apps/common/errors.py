"""The protocol's errors as one family of exceptions (PROTOCOL §8).

Services raise them; the WebSocket consumer turns them into `error` frames and
the REST layer into `{"error": {...}}` bodies with the status given here.
"""

from django.db import InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Failures of a backing service (Postgres, Redis), not of the request: answered
# with the retryable `unavailable`, never a 500.
OUTAGES = (OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError)


class NatterError(Exception):
    code = "bad_request"
    status = 400
    message = "The request is not valid."

    def __init__(self, message: str | None = None, **extra):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.extra = extra

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message, **self.extra}


class BadRequest(NatterError):
    pass


class UnknownType(BadRequest):
    code = "unknown_type"
    message = "Unknown frame type."


class BadSignature(BadRequest):
    code = "bad_signature"
    message = "The signed prekey's signature does not verify against the identity key."


class Unauthorized(NatterError):
    code = "unauthorized"
    status = 401
    message = "Authentication is required, or the token is not valid."


class Forbidden(NatterError):
    code = "forbidden"
    status = 403
    message = "You may not do this."


class NotFound(NatterError):
    code = "not_found"
    status = 404
    message = "Not found."


class NotMember(NatterError):
    # 404, the same answer as for a conversation that does not exist, so ids of
    # other people's conversations cannot be probed.
    code = "not_member"
    status = 404
    message = "No such conversation, or you are not a member of it."


class MethodNotAllowed(NatterError):
    code = "method_not_allowed"
    status = 405
    message = "This method is not allowed here."


class Conflict(NatterError):
    code = "conflict"
    status = 409
    message = "The request conflicts with the current state."


class DuplicateKeyId(Conflict):
    code = "duplicate_key_id"
    message = "These one-time prekey ids are already uploaded."

    def __init__(self, *, key_ids: list[int]):
        super().__init__(key_ids=key_ids)


class OffsetMismatch(Conflict):
    code = "offset_mismatch"
    message = "The server has a different number of bytes of this upload; resume from `offset`."

    def __init__(self, *, offset: int):
        super().__init__(offset=offset)


class DeviceMismatch(NatterError):
    code = "device_mismatch"
    status = 409
    message = "The ciphertexts do not match the active devices of the conversation."

    def __init__(self, *, missing: list[str], extra: list[str]):
        super().__init__(missing=missing, extra=extra)


class MediaExpired(NatterError):
    code = "media_expired"
    status = 410
    message = "This file has expired on the server; ask the sender to send it again."


class TooLarge(NatterError):
    code = "too_large"
    status = 413
    message = "The request is too large."

    def __init__(self, message: str | None = None, *, max_bytes: int):
        super().__init__(message, max_bytes=max_bytes)


class RateLimited(NatterError):
    code = "rate_limited"
    status = 429
    message = "Too many requests; retry later."

    def __init__(self, message: str | None = None, *, retry_after: int):
        super().__init__(message, retry_after=retry_after)


class Unavailable(NatterError):
    code = "unavailable"
    status = 503
    message = "The service is temporarily unavailable; retry later."

    def __init__(self, message: str | None = None, *, retry_after: int = 2):
        super().__init__(message, retry_after=retry_after)
