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
