"""One fast JSON codec for frames, events and long-poll answers."""

import orjson

# Validation errors of list fields are keyed by index (ints): allow non-str keys.
_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(obj) -> str:
    return orjson.dumps(obj, option=_OPTIONS).decode()


def dumpb(obj) -> bytes:
    return orjson.dumps(obj, option=_OPTIONS)


def loads(data: str | bytes):
    return orjson.loads(data)
