"""The operator's commands against a running server: `chatd rooms …`, `chatd users
disconnect`, `chatd history`, and `chatd backup` (which works on the database file).

The commands go through the server's admin HTTP API, as any admin client would, so the
running server stays the one place that changes rooms and tells live sessions. They
sign a short-lived admin token with the server's own secret (found exactly where the
service keeps it), or take one with `--token` / $CHATD_ADMIN_TOKEN when the server
verifies tokens with a public key it cannot sign with. The server is found at the first
`[http] listen` address, or at `--url`.

Output is a readable table, or the API's JSON with `--json`. Exit status: 0 done, 1 the
server refused or could not be reached (the reason on stderr), 2 a usage or config error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chatd import config as config_mod

Json = Any
# The admin token's identity: an id no real user has, so nothing it does is mistaken
# for a user's own action.
CLI_USER_ID = 2**53 - 1
CLI_TOKEN_TTL = 60.0
TIMEOUT = 30.0


class CommandError(Exception):
    """What the operator is told, on one line; exit status 1."""


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    config_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    def client(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        config_arg(p)
        p.add_argument("--url", help="the server's HTTP API (default: from [http] listen)")
        p.add_argument(
            "--token",
            default=os.environ.get("CHATD_ADMIN_TOKEN"),
            help="an admin JWT (default: $CHATD_ADMIN_TOKEN, else one signed here with "
            "the server's secret)",
        )
        p.add_argument("--json", action="store_true", help="print the API's JSON")
        return p

    rooms = sub.add_parser("rooms", help="list and change rooms on the running server")
    verbs = rooms.add_subparsers(dest="verb", required=True)
    client(verbs.add_parser("list", help="every room"))
    client(verbs.add_parser("show", help="one room, its members and invitations")).add_argument(
        "room", type=int
    )
    create = client(verbs.add_parser("create", help="a new room"))
    create.add_argument("name")
    create.add_argument("--public", action="store_true", help="anyone may join it")
    create.add_argument("--member", type=int, action="append", default=[], metavar="USER")
    rename = client(verbs.add_parser("rename", help="give a room a new name"))
    rename.add_argument("room", type=int)
    rename.add_argument("name")
    client(verbs.add_parser("delete", help="delete a room and its messages")).add_argument(
        "room", type=int
    )
    for verb, what in (
        ("add-member", "make a user a member"),
        ("remove-member", "remove a member (their live sessions leave the room)"),
        ("invite", "let a user join a private room"),
    ):
        p = client(verbs.add_parser(verb, help=what))
        p.add_argument("room", type=int)
        p.add_argument("user", type=int)

    users = sub.add_parser("users", help="act on a user's sessions")
    user_verbs = users.add_subparsers(dest="verb", required=True)
    disconnect = client(
        user_verbs.add_parser("disconnect", help="close every session of a user, everywhere")
    )
    disconnect.add_argument("user", type=int)
    disconnect.add_argument(
        "--revoke-tokens",
        action="store_true",
        help="also refuse every token issued to the user before now",
    )

    history = client(sub.add_parser("history", help="a room's latest messages"))
    history.add_argument("room", type=int)
    history.add_argument("--limit", type=int, default=20, help="how many (default 20)")

    backup = sub.add_parser(
        "backup", help="copy the live database to PATH, consistently, while it runs"
    )
    config_arg(backup)
    backup.add_argument("path", type=Path)
    backup.add_argument("--json", action="store_true")


COMMANDS = ("rooms", "users", "history", "backup")


def run(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    try:
        if args.command == "backup":
            return _backup(cfg, args)
        api = Api(args.url or server_url(cfg), args.token or _mint(cfg))
        command = f"{args.command} {getattr(args, 'verb', '')}".strip()
        result = _ACTIONS[command](api, args)
    except CommandError as exc:
        print(f"chatd: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(_RENDER[command](result))
    return 0


# --- reaching the server -----------------------------------------------------------------


def server_url(cfg: config_mod.Config) -> str:
    """The HTTP API at the first `[http] listen` address; a wildcard is reached on
    loopback."""
    if not cfg.http.listen:
        raise CommandError("[http] listen is empty: give --url")
    first = cfg.http.listen[0]
    if first.startswith("fd://"):
        raise CommandError(f"the HTTP listener is a passed socket ({first}): give --url")
    host, port = config_mod.parse_listen(first)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _mint(cfg: config_mod.Config) -> str:
    from chatd.server import make_authenticator

    try:
        auth = make_authenticator(cfg)
        return auth.mint(CLI_USER_ID, "chatd-cli", admin=True, ttl=CLI_TOKEN_TTL)
    except (ValueError, OSError) as exc:
        raise CommandError(f"cannot sign an admin token: {exc} (or give --token)") from None


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base.rstrip("/")
        self._token = token

    def call(self, method: str, path: str, body: Json | None = None) -> Json:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise CommandError(_refusal(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CommandError(f"cannot reach the server at {self.base}: {reason}") from None


def _refusal(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        return f"{body['message']} ({exc.code} {body['error']})"
    except (ValueError, KeyError, TypeError):
        return f"the server answered {exc.code} {exc.reason}"


# --- the commands --------------------------------------------------------------------------


def _room_body(api: Api, args: argparse.Namespace) -> Json:
    room = api.call("GET", f"/admin/rooms/{args.room}")
    members = api.call("GET", f"/admin/rooms/{args.room}/members")
    return {**room, "members": members["members"], "invited": members["invited"]}


_ACTIONS: dict[str, Callable[[Api, argparse.Namespace], Json]] = {
    "rooms list": lambda api, a: api.call("GET", "/admin/rooms")["rooms"],
    "rooms show": _room_body,
    "rooms create": lambda api, a: api.call(
        "POST", "/admin/rooms", {"name": a.name, "public": a.public, "members": a.member}
    ),
    "rooms rename": lambda api, a: api.call("PATCH", f"/admin/rooms/{a.room}", {"name": a.name}),
    "rooms delete": lambda api, a: api.call("DELETE", f"/admin/rooms/{a.room}"),
    "rooms add-member": lambda api, a: api.call(
        "POST", f"/admin/rooms/{a.room}/members", {"userId": a.user}
    ),
    "rooms remove-member": lambda api, a: api.call(
        "DELETE", f"/admin/rooms/{a.room}/members/{a.user}"
    ),
    "rooms invite": lambda api, a: api.call(
        "POST", f"/admin/rooms/{a.room}/invites", {"userId": a.user}
    ),
    "users disconnect": lambda api, a: api.call(
        "POST", f"/admin/users/{a.user}/disconnect", {"revokeTokens": a.revoke_tokens}
    ),
    "history": lambda api, a: api.call(
        "GET", f"/admin/rooms/{a.room}/messages?limit={a.limit}"
    )["messages"],
}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns as wide as their widest cell; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(r[i], int) for r in rows) and rows for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(w) if numeric[i] else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _rooms_table(rooms: list[Json]) -> str:
    if not rooms:
        return "no rooms"
    return table(
        ["ID", "NAME", "PUBLIC", "MEMBERS"],
        [[r["id"], r["name"], "yes" if r["public"] else "no", len(r["members"])] for r in rooms],
    )


def _room_text(room: Json) -> str:
    lines = [f"room {room['id']}: {room['name']} ({'public' if room['public'] else 'private'})"]
    members = room["members"]
    if members and isinstance(members[0], dict):
        lines.append(
            table(
                ["MEMBER", "ONLINE"],
                [[m["userId"], "yes" if m["online"] else "no"] for m in members],
            )
        )
    else:
        lines.append(f"members: {', '.join(map(str, members)) or 'none'}")
    if room.get("invited"):
        lines.append(f"invited: {', '.join(map(str, room['invited']))}")
    return "\n".join(lines)


def _history_text(messages: list[Json]) -> str:
    if not messages:
        return "no messages"
    # Newest first from the API; oldest first on a terminal, as a chat reads.
    return table(
        ["ID", "TIME", "USER", "CONTENT"],
        [
            [m["id"], m["timestamp"], m["user"]["username"], m["content"].replace("\n", " ")]
            for m in reversed(messages)
        ],
    )


_RENDER: dict[str, Callable[[Json], str]] = {
    "rooms list": _rooms_table,
    "rooms show": _room_text,
    "rooms create": lambda r: f"created {_room_text(r)}",
    "rooms rename": lambda r: f"renamed {_room_text(r)}",
    "rooms delete": lambda r: f"deleted room {r['deleted']}: {r['name']}",
    "rooms add-member": _room_text,
    "rooms remove-member": _room_text,
    "rooms invite": lambda r: f"invited user {r['invited']} to room {r['roomId']}",
    "users disconnect": lambda r: (
        f"closed {r['closed']} session(s) of user {r['userId']}"
        + ("; tokens issued before now are revoked" if r["revoked"] else "")
    ),
    "history": _history_text,
}


def _backup(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from chatd.store.backup import BackupError, backup

    source = config_mod.resolve_store_path(cfg)
    try:
        result = backup(source, args.path)
    except BackupError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps({"path": str(result.path), "bytes": result.bytes,
                          "messages": result.messages,
                          "lastMessageId": result.last_message_id}))
    else:
        print(f"backed up {source} to {result.path}: {result.bytes} bytes, "
              f"{result.messages} messages up to id {result.last_message_id}")
    return 0
