"""Helpers for the browser tests: a daphne that serves the web UI's static files,
Debian's Chromium under Playwright, and the steps every test repeats.

Why a daphne of our own: servestatic (DEBUG off) serves STATIC_ROOT as it was when
the process started, and the shared `natter_server` may have started before
anything was collected, or with an older copy. So the browser tests run
`collectstatic` (as `make run` does) and start one more daphne on the same test
database, Redis and Celery worker: it talks to `natter_server` like a second
server process would.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import subprocess
import sys
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bench.server import free_port
from config.server import COMMAND as DAPHNE

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "docs" / "screenshots"
PASSWORD = "a long pass phrase 42"
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1200, "height": 780}


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium): no browser to test with"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@dataclass
class WebServer:
    url: str
    env: dict
    logs: Path
    process: subprocess.Popen = field(repr=False)

    def log(self) -> str:
        return (self.logs / "web-daphne.log").read_text(errors="replace")


@pytest.fixture(scope="session", name="web_server")
def web_server_fixture(natter_server):
    require_chromium()
    # Accounts made through this server hash passwords fast (tests only, as in conftest).
    env = {**natter_server.env, "NATTER_FAST_PASSWORD_HASHER": "1"}
    subprocess.run(
        [str(BIN / "python"), "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    port = free_port()
    logs = natter_server.logs
    process = subprocess.Popen(
        [
            *DAPHNE,
            "-e",
            f"tcp:port={port}:interface=127.0.0.1:backlog=512",
            "--websocket_timeout",
            "-1",
            "config.asgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=(logs / "web-daphne.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = WebServer(f"http://127.0.0.1:{port}", env, logs, process)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"daphne exited early:\n{server.log()}")
            try:
                r = httpx.get(server.url + "/static/natter/app/app.js", timeout=1)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not serve the web UI:\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def handle(name: str) -> str:
    return f"{name}_{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def chromium():
    """A headless Debian Chromium under Playwright, closed afterwards."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


class Person:
    """One browser context (its own cookies and IndexedDB): one device of one user."""

    def __init__(self, context, page, username: str, display_name: str):
        self.context, self.page = context, page
        self.username, self.display_name = username, display_name
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, msg) -> None:
        # Chromium logs every failed request (a 404 lookup, an offline fetch) as an
        # error; those are expected answers here. Anything else is a bug.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            self.errors.append(f"console: {msg.text}")

    async def user_id(self) -> str:
        return await self.page.evaluate(
            """async () => {
                const r = await fetch('/api/v1/me', {credentials: 'same-origin'});
                return (await r.json()).id;
            }"""
        )


async def sign_up(
    browser,
    server: WebServer,
    name: str,
    *,
    query: str = "",
    viewport: dict | None = None,
    shot: str | None = None,
    phone: bool = False,
) -> Person:
    """Open the web UI, create an account through the form, and wait for the chat list."""
    if phone:
        context = await browser.new_context(
            viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2, locale="en-GB"
        )
    else:
        context = await browser.new_context(viewport=viewport or DESKTOP, locale="en-GB")
    page = await context.new_page()
    username = handle(name.lower())
    person = Person(context, page, username, name)
    await page.goto(server.url + "/" + query)
    await page.get_by_role("tab", name="Create account").click()
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Your name").fill(name)
    await page.get_by_label("Password").fill(PASSWORD)
    if shot:
        await screenshot(page, shot)
    await page.get_by_role("button", name="Create account").click()
    await page.locator(".side-header").wait_for(timeout=20000)
    await wait_connected(page)
    return person


async def log_in(browser, server: WebServer, person: Person, *, phone: bool = False) -> Person:
    """The same user on another browser: a new device with its own keys."""
    context = await browser.new_context(viewport=PHONE if phone else DESKTOP, locale="en-GB")
    page = await context.new_page()
    other = Person(context, page, person.username, person.display_name)
    await page.goto(server.url + "/")
    await page.get_by_label("Username").fill(person.username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.locator(".side-header").wait_for(timeout=20000)
    await wait_connected(page)
    return other


async def wait_connected(page, transport: str | None = None, timeout: float = 20000) -> None:
    await page.wait_for_function("document.body.dataset.connection === 'online'", timeout=timeout)
    if transport:
        assert await page.evaluate("document.body.dataset.transport") == transport


async def start_chat(person: Person, username: str) -> str:
    """Start a direct chat by exact username from the New chat dialog; returns its id."""
    page = person.page
    await page.get_by_role("button", name="New chat").click()
    await page.get_by_label("Their exact username").fill(username)
    await page.get_by_role("button", name="Start chat").click()
    await page.locator("#composer-input").wait_for()
    return page.url.rsplit("/", 1)[-1]


def chat_item(page, title: str):
    """The chat list's row of the conversation with exactly this title."""
    exact = page.locator(".chat-title", has_text=re.compile(f"^{re.escape(title)}$"))
    return page.locator("a.chat-item").filter(has=exact)


async def open_chat(person: Person, title: str) -> None:
    await chat_item(person.page, title).click()
    await person.page.locator("#chat-title", has_text=title).wait_for()


async def send(person: Person, text: str) -> None:
    box = person.page.locator("#composer-input")
    await box.fill(text)
    await box.press("Enter")


def message(page, text: str):
    """The timeline row of a message by its text."""
    return page.locator("li.msg", has_text=text)


async def wait_status(page, text: str, status: str, timeout: float = 15000) -> None:
    await (
        message(page, text)
        .and_(page.locator(f'[data-status="{status}"]'))
        .wait_for(timeout=timeout)
    )


def png(width: int, height: int) -> bytes:
    """A real PNG (a colour gradient), so the browser can decode it and make a thumbnail."""
    rows = b"".join(
        b"\0" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 160))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def media_api_or_skip(url: str) -> None:
    # Without apps/media the path is Django's plain 404 page; with it, 401 (no session).
    if httpx.post(url + "/api/v1/media?conversation=c_1").status_code == 404:
        pytest.skip("the media API (apps/media) is not on this server yet")


def media_api(url: str) -> bool:
    return httpx.post(url + "/api/v1/media?conversation=c_1").status_code != 404


async def screenshot(page, name: str) -> None:
    """Keep a screenshot in docs/screenshots/ when NATTER_SCREENSHOTS=1."""
    if os.environ.get("NATTER_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
