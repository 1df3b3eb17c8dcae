"""`python -m config.server` runs daphne on uvloop (the e2e suites start it that way)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = (
    "from config import server; server.install_loop(); import daphne.server as d; "
    "print(type(d.twisted_loop).__module__)"
)


def loop_module(**env) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_daphne_gets_a_uvloop_loop():
    assert loop_module().startswith("uvloop")


def test_natter_uvloop_0_keeps_asyncios_own_loop():
    assert loop_module(NATTER_UVLOOP="0").startswith("asyncio")


def test_start_up_objects_are_frozen_out_of_the_collectors_passes():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import gc; from config import server; server.prepare(); print(gc.get_freeze_count())",
        ],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(out.stdout.strip()) > 50_000  # Django, the URLconf, the app: all of it


DEBUG_ARGUMENTS_PROBE = """
import sys
from twisted.logger import formatEvent
from autobahn import util
from autobahn.twisted import websocket as twisted_websocket
from autobahn.websocket import protocol
from config import server

method = protocol.WebSocketProtocol.sendData
eager = (util.hltype(method), util.hlval(1234))
server.prepare()
server.prepare()  # twice: still one level of deferral
for module in (twisted_websocket, protocol):
    deferred = (module.hltype(method), module.hlval(1234))
    assert type(deferred[0]).__name__ == "_Deferred", type(deferred[0])
    assert not isinstance(module.hltype.args[0], type(module.hltype)), "deferred twice"
    event = {"log_format": "{func} sent {n} bytes", "func": deferred[0], "n": deferred[1]}
    assert formatEvent(event) == f"{eager[0]} sent {eager[1]} bytes", formatEvent(event)
    assert str(deferred[0]) == eager[0] and repr(deferred[1]) == repr(eager[1])
print("ok")
"""


def test_autobahns_per_frame_debug_arguments_are_formatted_only_when_written():
    # The placeholders must format exactly as autobahn's own helpers would, through
    # the logger's own formatting, so that turning debug logging on shows the same.
    out = subprocess.run(
        [sys.executable, "-c", DEBUG_ARGUMENTS_PROBE],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
