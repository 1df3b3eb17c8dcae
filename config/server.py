"""Start daphne on uvloop: `python -m config.server <daphne's options>`.

The application is imported, and what start-up made frozen out of the garbage
collector's passes (`prepare`), before daphne runs.

daphne runs Twisted's asyncio reactor on a loop it makes as `daphne.server` is
imported. With uvloop's policy set first, that loop is uvloop's (libuv, in C)
and everything above it is the same daphne. On `bench.load`, two processes on
this 2-core machine, it delivered 16-23 % more messages per second and cut the
latency at 500 msgs/s (docs/benchmarks.md). NATTER_UVLOOP=0 keeps asyncio's own
loop.
"""

import asyncio
import functools
import gc
import os
import sys

# How the scripts, tests and benchmarks start a server process (then daphne's options).
COMMAND = [sys.executable, "-m", "config.server"]


def install_loop() -> None:
    """Make new event loops uvloop's, unless NATTER_UVLOOP=0."""
    if os.environ.get("NATTER_UVLOOP", "1") != "0":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class _Deferred:
    """An argument of a debug log line, formatted only if the line is written."""

    __slots__ = ("function", "args", "kwargs")

    def __init__(self, function, *args, **kwargs):
        self.function = function
        self.args = args
        self.kwargs = kwargs

    def __str__(self) -> str:
        return str(self.function(*self.args, **self.kwargs))

    def __format__(self, spec: str) -> str:
        return format(self.function(*self.args, **self.kwargs), spec)

    def __repr__(self) -> str:
        return repr(self.function(*self.args, **self.kwargs))


# autobahn's modules that format debug arguments on every frame, and the helpers.
AUTOBAHN_EAGER_FORMATTING = {
    "autobahn.twisted.websocket": ("hltype", "hlval"),
    "autobahn.websocket.protocol": ("hltype", "hlval"),
}


def defer_autobahn_debug_formatting() -> None:
    """Format autobahn's debug log arguments only when a debug line is written.

    autobahn logs every read and every write at debug level, and builds the
    arguments first: `hltype(self.sendData)` inspects the method and colours its
    name with click. With debug off the line is dropped, but the arguments were
    5.5 % of a socket process's GIL time at 500 msgs/s (py-spy). In the two
    modules that do it per frame, the helpers now return a placeholder that
    formats itself when a line is written: debug output is unchanged.
    """
    import importlib

    for module_name, helpers in AUTOBAHN_EAGER_FORMATTING.items():
        module = importlib.import_module(module_name)
        for name in helpers:
            eager = getattr(module, name)
            if isinstance(eager, functools.partial):
                continue  # done already
            setattr(module, name, functools.partial(_Deferred, eager))


def prepare() -> None:
    """The loop, then the application, then a freeze of everything made so far.

    Django, the URLconf and the app's modules live as long as the process, but the
    collector's full passes walked them all: 116 and 124 ms pauses in a run at
    500 msgs/s, with every socket of the process stopped meanwhile. Frozen, they
    are left out (max latency 86 and 104 ms against 224 and 189 ms without).
    """
    install_loop()
    import daphne.server  # noqa: F401  (makes daphne's loop, with the policy set)

    defer_autobahn_debug_formatting()

    import config.asgi  # noqa: F401  (daphne imports it again: the same module)

    gc.freeze()


def main() -> None:
    prepare()
    from daphne.cli import CommandLineInterface

    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    sys.exit(main())
