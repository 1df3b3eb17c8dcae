"""One fast JSON codec for frames, events and long-poll answers."""

import orjson


def dumps(obj) -> str:
    return orjson.dumps(obj).decode()


def dumpb(obj) -> bytes:
    return orjson.dumps(obj)


def loads(data: str | bytes):
    return orjson.loads(data)
