"""Opaque public ids: a type prefix and a random 62-bit integer key.

Random keys keep ids unguessable and leak neither the size of the user base nor
message volume; the prefix makes a mixed-up id fail loudly instead of matching a
row of another table.
"""

import secrets


def random_key() -> int:
    return secrets.randbits(62) + 1


def encode(prefix: str, key: int) -> str:
    return f"{prefix}_{key}"


def decode(prefix: str, value: object) -> int | None:
    """Return the integer key of a public id, or None when it is not one of `prefix`."""
    if not isinstance(value, str):
        return None
    head, sep, tail = value.partition("_")
    if head != prefix or not sep or not tail.isascii() or not tail.isdigit() or len(tail) > 19:
        return None
    key = int(tail)
    return key if 0 < key < 2**63 else None


USER, DEVICE, CONVERSATION, MESSAGE, MEDIA = "u", "d", "c", "m", "f"
