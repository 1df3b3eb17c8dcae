"""Start daphne on uvloop: `python -m config.server <daphne's options>`.

daphne runs Twisted's asyncio reactor on a loop it makes as `daphne.server` is
imported. With uvloop's policy set first, that loop is uvloop's (libuv, in C)
and everything above it is the same daphne. On `bench.load`, two processes on
this 2-core machine, it delivered 16-23 % more messages per second and cut the
latency at 500 msgs/s (docs/benchmarks.md). NATTER_UVLOOP=0 keeps asyncio's own
loop.
"""

import asyncio
import os
import sys

# How the scripts, tests and benchmarks start a server process (then daphne's options).
COMMAND = [sys.executable, "-m", "config.server"]


def install_loop() -> None:
    """Make new event loops uvloop's, unless NATTER_UVLOOP=0."""
    if os.environ.get("NATTER_UVLOOP", "1") != "0":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> None:
    install_loop()
    from daphne.cli import CommandLineInterface  # imports daphne.server: makes the loop

    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    sys.exit(main())
