"""Safety numbers (docs/crypto.md §8): what two users compare to detect a key substitution."""

from __future__ import annotations

from .primitives import kdf

FINGERPRINT_LABEL = b"natter-fp-v1"
FINGERPRINT_HASHES = 1024


def _fingerprint_digits(user_id: str, identity_keys: list[bytes]) -> str:
    """30 digits for one user: fp_0 .. fp_1023 (1024 hashes in all), then 6 chunks of 5 bytes."""
    keys = b"".join(sorted(bytes(k) for k in identity_keys))
    fp = kdf(b"", FINGERPRINT_LABEL + user_id.encode("utf-8") + b"\x00" + keys, 64)
    for _ in range(FINGERPRINT_HASHES - 1):
        fp = kdf(b"", fp + keys, 64)
    return "".join(f"{int.from_bytes(fp[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def safety_number(user_a: str, keys_a: list[bytes], user_b: str, keys_b: list[bytes]) -> str:
    """The 60-digit number both users see, as 12 groups of 5 digits separated by spaces.

    The user whose id sorts first (bytewise on UTF-8) comes first, so both sides agree.
    """
    first = _fingerprint_digits(user_a, keys_a)
    second = _fingerprint_digits(user_b, keys_b)
    if user_b.encode("utf-8") < user_a.encode("utf-8"):
        first, second = second, first
    digits = first + second
    return " ".join(digits[i : i + 5] for i in range(0, 60, 5))
