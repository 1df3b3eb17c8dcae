"""`natter`: a terminal chat on the SDK, end-to-end encrypted like every other client.

    natter register alice --server http://127.0.0.1:8000
    natter login alice --server http://127.0.0.1:8000
    natter send @bob "hello"          # a direct message (created on first use)
    natter listen                     # print messages as they arrive
    natter chat @bob                  # type lines to send, see replies
    natter group create "Team" @bob @carol

Each profile (`--profile`, default "default") is one device: its token and its
keys live in `$NATTER_HOME/<profile>.json` (default ~/.config/natter), readable
by you only. Passwords are asked for, or read from `--password-stdin` or
$NATTER_PASSWORD.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from .client import NatterClient
from .e2e import Received
from .errors import ApiError, NatterError
from .keystore import FileKeyStore


class CliError(Exception):
    """A problem to report in one line, with exit status 1."""


def profile_path(args: argparse.Namespace) -> Path:
    home = Path(args.home or os.environ.get("NATTER_HOME") or Path.home() / ".config" / "natter")
    return home / f"{args.profile}.json"


def read_password(args: argparse.Namespace, prompt: str = "Password: ") -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if os.environ.get("NATTER_PASSWORD"):
        return os.environ["NATTER_PASSWORD"]
    return getpass.getpass(prompt)


class Session:
    """A logged-in profile: the client, plus names for the ids the server speaks in."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.store = FileKeyStore(profile_path(args))
        account = self.store.account
        if not account.get("token"):
            raise CliError(f"profile {args.profile!r} is not logged in; run `natter login`")
        self.client = NatterClient(account["base_url"], account["token"], keystore=self.store)
        self.client.user, self.client.device = account["user"], account["device"]
        self.names: dict[str, str] = {}
        self.conversations: dict[str, dict[str, Any]] = {}

    async def refresh(self) -> None:
        for conversation in await self.client.conversations():
            self.conversations[conversation["id"]] = conversation
            for member in conversation.get("members", []):
                self.names[member["id"]] = member.get("username") or member["id"]

    async def user_id(self, handle: str) -> str:
        if handle.startswith("u_"):
            return handle
        user = await self.client.user_by_handle(handle.removeprefix("@"))
        self.names[user["id"]] = user["username"]
        return user["id"]

    async def conversation(self, target: str) -> str:
        """`@user` → the direct chat; `c_…` → that conversation; else a group by its title."""
        if target.startswith("@"):
            return (await self.client.direct_conversation(await self.user_id(target)))["id"]
        if target.startswith("c_"):
            return target
        await self.refresh()
        matches = [c["id"] for c in self.conversations.values() if c["title"] == target]
        if len(matches) != 1:
            raise CliError(f"no single conversation is called {target!r}; use @user or its c_ id")
        return matches[0]

    def describe(self, item: Received) -> dict[str, Any]:
        event = item.event
        data: dict[str, Any] = {"type": item.type, "cursor": item.cursor}
        if item.type == "message":
            sender = event["sender"]["user"]
            data |= {
                "conversation": event["conversation"],
                "seq": event["seq"],
                "message_id": event["message_id"],
                "sender": self.names.get(sender, sender),
                "sender_id": sender,
                "sent_at": event.get("sent_at"),
                "reply_to_seq": event.get("reply_to_seq"),
            }
            if item.content is not None:
                data["content"] = item.content
                data["text"] = item.text
            else:
                data["error"] = item.error
        else:
            data |= {k: v for k, v in event.data.items() if k != "type"}
        return data

    def line(self, item: Received) -> str | None:
        data = self.describe(item)
        if item.type == "message":
            conversation = self.conversations.get(data["conversation"], {})
            where = conversation.get("title", data["conversation"])
            text = data.get("text")
            if text is None:
                text = (
                    f"<{data['content']['type']}>" if "content" in data else "⚠ could not decrypt"
                )
            time = (data.get("sent_at") or "")[11:16]
            return f"[{time}] {where} · {data['sender']}: {text}"
        if item.type == "receipt":
            marks = {"delivered": "✓✓", "read": "✓✓ (read)", "expired": "✗ not delivered"}
            who = self.names.get(data.get("by_user"), data.get("by_user"))
            return f"  {marks.get(data.get('status'), data.get('status'))} up to #{data.get('up_to_seq')} by {who}"
        if item.type == "group":
            who = ", ".join(self.names.get(u, u) for u in data.get("user_ids") or [])
            return f"  ~ group {data.get('title') or data.get('conversation')}: {data.get('action')} {who}".rstrip()
        if item.type == "device" and data.get("action") == "identity_changed":
            who = self.names.get(data.get("user"), data.get("user"))
            return f"  ! the security code with {who} changed; compare with `natter safety @{who}`"
        return None


async def cmd_register(args: argparse.Namespace) -> None:
    async with NatterClient(args.server) as client:
        user = await client.register(args.username, read_password(args), args.display_name)
    print(f"registered {user['username']} ({user['id']}); now run `natter login {args.username}`")


async def cmd_login(args: argparse.Namespace) -> None:
    path = profile_path(args)
    if path.exists() and json.loads(path.read_text()).get("account", {}).get("token"):
        raise CliError(f"profile {args.profile!r} is logged in already; `natter logout` first")
    store = FileKeyStore(path)
    async with NatterClient(args.server, keystore=store) as client:
        await client.login(args.username, read_password(args), device_name=args.device_name)
    print(f"logged in as {args.username}, device {client.device_id}; keys published")


async def cmd_logout(args: argparse.Namespace) -> None:
    session = Session(args)
    async with session.client:
        await session.client.logout()
    profile_path(args).unlink(missing_ok=True)
    print("logged out; this device is revoked and its keys deleted")


async def cmd_whoami(args: argparse.Namespace) -> None:
    session = Session(args)
    async with session.client:
        me = await session.client.me()
    print(f"{me['username']} ({me['id']}), device {session.client.device_id}")


async def cmd_send(args: argparse.Namespace) -> None:
    session = Session(args)
    async with session.client:
        conversation = await session.conversation(args.target)
        ack = await session.client.send_text(
            conversation, " ".join(args.text), reply_to_seq=args.reply_to
        )
    print(json.dumps(_ack(ack)) if args.json else f"✓ #{ack.seq}")


def _ack(ack: Any) -> dict[str, Any]:
    return {
        "client_id": ack.client_id,
        "message_id": ack.message_id,
        "conversation": ack.conversation,
        "seq": ack.seq,
        "server_ts": ack.server_ts,
    }


async def _listen(session: Session, args: argparse.Namespace, conversation: str | None) -> None:
    """Print events until --count messages were shown or --idle seconds passed quietly."""
    shown = 0
    read_upto: dict[str, int] = {}
    async with session.client.connect(args.transport, auto_ack=False) as conn:
        stream = session.client.receive(conn).__aiter__()
        while args.count is None or shown < args.count:
            try:
                item = await asyncio.wait_for(stream.__anext__(), timeout=args.idle)
            except (TimeoutError, StopAsyncIteration):
                break
            if item.type == "message" and item.get("conversation") not in session.conversations:
                await session.refresh()
            if conversation and item.get("conversation") not in (conversation, None):
                continue
            if args.json:
                print(json.dumps(session.describe(item), ensure_ascii=False), flush=True)
            else:
                text = session.line(item)
                if text:
                    print(text, flush=True)
            if item.type == "message":
                shown += 1
                if item.event["sender"]["user"] != session.client.user_id and not args.no_read:
                    c = item["conversation"]
                    read_upto[c] = max(read_upto.get(c, 0), item["seq"])
                    await conn.read(c, read_upto[c])


async def cmd_listen(args: argparse.Namespace) -> None:
    session = Session(args)
    async with session.client:
        await session.refresh()
        await _listen(session, args, None)


async def cmd_chat(args: argparse.Namespace) -> None:
    session = Session(args)
    async with session.client:
        conversation = await session.conversation(args.target)
        await session.refresh()
        title = session.conversations.get(conversation, {}).get("title", conversation)
        print(f"chatting in {title}; type a line to send it, Ctrl-D to quit", flush=True)
        args.count, args.idle = None, None
        listener = asyncio.create_task(_listen(session, args, conversation))
        loop = asyncio.get_running_loop()
        try:
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    break
                if line.strip():
                    ack = await session.client.send_text(conversation, line.rstrip("\n"))
                    print(f"  ✓ #{ack.seq}", flush=True)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)


async def cmd_conversations(args: argparse.Namespace) -> None:
    session = Session(args)
    async with session.client:
        await session.refresh()
    for c in session.conversations.values():
        unread = c["last_seq"] - c["read_seq"]
        badge = f" ({unread} unread)" if unread else ""
        print(f"{c['id']}  {c['kind']:6}  {c['title']}{badge}")


async def cmd_safety(args: argparse.Namespace) -> None:
    session = Session(args)
    async with session.client:
        user_id = await session.user_id(args.user)
        number = await session.client.safety_number(user_id)
    print(number)


async def cmd_group(args: argparse.Namespace) -> None:
    session = Session(args)
    client = session.client
    async with client:
        if args.action == "create":
            members = [await session.user_id(u) for u in args.users]
            group = await client.create_group(args.title, members)
            print(f"created {group['title']} ({group['id']})")
            return
        group_id = await session.conversation(args.group)
        if args.action == "add":
            await client.add_members(group_id, [await session.user_id(u) for u in args.users])
        elif args.action == "remove":
            for user in args.users:
                await client.remove_member(group_id, await session.user_id(user))
        elif args.action == "promote":
            for user in args.users:
                await client.promote(group_id, await session.user_id(user))
        elif args.action == "leave":
            await client.leave_group(group_id)
            print("left the group")
            return
        group = await client.group(group_id)
    admins = set(group.get("admins", []))
    print(f"{group['title']} ({group['id']})")
    for member in group.get("members", []):
        print(
            f"  {member.get('username', member['id'])}{' (admin)' if member['id'] in admins else ''}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="natter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=os.environ.get("NATTER_PROFILE", "default"))
    parser.add_argument(
        "--home", help="where profiles live (default $NATTER_HOME or ~/.config/natter)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=func)
        return p

    server = os.environ.get("NATTER_SERVER", "http://127.0.0.1:8000")
    p = add("register", cmd_register, "create a user")
    p.add_argument("username")
    p.add_argument("--display-name")
    p.add_argument("--server", default=server)
    p.add_argument("--password-stdin", action="store_true")
    p = add("login", cmd_login, "log in: this profile becomes a new device with its own keys")
    p.add_argument("username")
    p.add_argument("--server", default=server)
    p.add_argument("--device-name", default="natter-cli")
    p.add_argument("--password-stdin", action="store_true")
    add("logout", cmd_logout, "revoke this device and delete its keys")
    add("whoami", cmd_whoami, "who this profile is")
    p = add("send", cmd_send, "send a message: natter send @bob hello there")
    p.add_argument("target", help="@user, a conversation id (c_…) or a group's title")
    p.add_argument("text", nargs="+")
    p.add_argument("--reply-to", type=int, metavar="SEQ")
    p.add_argument("--json", action="store_true")
    for name, func, help_ in (
        ("listen", cmd_listen, "print messages as they arrive"),
        ("chat", cmd_chat, "chat in one conversation: lines you type are sent"),
    ):
        p = add(name, func, help_)
        if name == "chat":
            p.add_argument("target", help="@user, a conversation id (c_…) or a group's title")
        else:
            p.add_argument("--count", type=int, help="stop after this many messages")
            p.add_argument("--idle", type=float, help="stop after this many quiet seconds")
        p.add_argument("--transport", choices=["ws", "longpoll"], default="ws")
        p.add_argument("--json", action="store_true", help="one JSON object per event")
        p.add_argument("--no-read", action="store_true", help="do not send read receipts")
    add("conversations", cmd_conversations, "list conversations with unread counts")
    p = add("safety", cmd_safety, "show the safety number to compare with someone")
    p.add_argument("user", help="@user")
    p = add("group", cmd_group, "groups: create, show, add, remove, promote, leave")
    p.add_argument("action", choices=["create", "show", "add", "remove", "promote", "leave"])
    p.add_argument("group", nargs="?", help="the title (for create) or @… / c_… / title")
    p.add_argument("users", nargs="*", help="@user …")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "group":
        if not args.group:
            print("natter group: name the group", file=sys.stderr)
            return 2
        if args.action == "create":
            args.title = args.group
    try:
        asyncio.run(args.func(args))
    except CliError as exc:
        print(f"natter: {exc}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(f"natter: the server refused: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except NatterError as exc:
        print(f"natter: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
