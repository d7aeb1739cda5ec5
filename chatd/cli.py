"""`chatd serve | token | check-config | migrate-store`, `chatd --version`, and the
operator's commands (`rooms`, `users`, `history`, `backup`: chatd.admin_cli)."""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from chatd import admin_cli
from chatd import config as config_mod
from chatd.ops import logs, sdnotify

if TYPE_CHECKING:
    from chatd.store.migrate import MigrateResult

log = logging.getLogger("chatd")

EXIT_CONFIG = 2
EXIT_LISTEN = 1
EXIT_STORE = 1


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=os.environ.get("CHATD_CONFIG"),
        help="path to chatd.toml (default: $CHATD_CONFIG, else built-in defaults)",
    )


def version() -> str:
    """The installed distribution's version: the wheel, the zipapp (which holds the
    wheel's metadata) and an editable checkout all carry pyproject.toml's."""
    try:
        return importlib.metadata.version("chatd")
    except importlib.metadata.PackageNotFoundError:
        # Run from a source tree that was never installed: no metadata to read.
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatd", description="real-time chat server")
    parser.add_argument("--version", action="version", version=f"chatd {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    _config_arg(serve)

    token = sub.add_parser("token", help="print a JWT this server accepts")
    _config_arg(token)
    token.add_argument("--user-id", type=int, required=True)
    token.add_argument("--username", required=True)
    token.add_argument("--profile-image")
    token.add_argument("--email")
    token.add_argument("--user-type")
    token.add_argument("--admin", action="store_true")
    token.add_argument("--ttl", type=float, default=3600, help="seconds (default 3600)")

    check = sub.add_parser("check-config", help="validate and print the effective config")
    _config_arg(check)
    admin_cli.add_commands(sub, _config_arg)
    _add_migrate_store(sub)
    return parser


_MIGRATE_HELP = """\
Copy this node's SQLite database (the config's [store] path, or --from) into an empty
PostgreSQL database, for cluster mode: rooms, members, invites, messages with their
ids, edits and deletions, read marks and revocations. New ids continue after the old
ones. All in one transaction: on any error nothing is written. A database that holds
chatd data already is refused.

Stop the node first. The copy reads one consistent snapshot, so a running node does
no harm (a rehearsal, or --dry-run, may run beside it), but what it accepts after the
snapshot is not copied: the command warns when the file changed meanwhile.

Keep the password off the command line, where other users of the machine see it: leave
--to out to use the config's [store] dsn (the cluster's config, with --from naming the
node's file), or give the password in $PGPASSWORD or ~/.pgpass. It is never printed."""


def _add_migrate_store(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "migrate-store",
        help="copy this node's SQLite data into PostgreSQL (stop the node first)",
        description=_MIGRATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_arg(p)
    p.add_argument(
        "--from", dest="source", type=Path, metavar="PATH",
        help="the SQLite database (default: the config's [store] path)",
    )  # fmt: skip
    p.add_argument(
        "--to", dest="dsn", metavar="DSN",
        help="the PostgreSQL database: a libpq connection string or postgresql:// URI"
        " (default: the config's [store] dsn)",
    )  # fmt: skip
    p.add_argument(
        "--dry-run", action="store_true",
        help="copy everything, then roll back: checks and times the move, writes nothing",
    )  # fmt: skip


def _load(path: str | None) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        print(f"chatd: config error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = _load(args.config)
    if args.command == "check-config":
        print(f"# effective config from {cfg.source}")
        print(config_mod.to_toml(cfg))
        return 0
    if args.command == "token":
        return _token(cfg, args)
    if args.command in admin_cli.COMMANDS:
        return admin_cli.run(cfg, args)
    if args.command == "migrate-store":
        return _migrate_store(cfg, args)
    logs.setup(cfg.log.level, cfg.log.format)
    return trio.run(_serve_main, cfg, args.config)


def _token(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from chatd.server import make_authenticator

    if args.user_id <= 0:
        print("chatd: --user-id must be a positive integer", file=sys.stderr)
        return EXIT_CONFIG
    try:
        auth = make_authenticator(cfg)
        token = auth.mint(
            args.user_id,
            args.username,
            profile_image=args.profile_image,
            email=args.email,
            user_type=args.user_type,
            admin=args.admin,
            ttl=args.ttl,
        )
    except (ValueError, OSError) as exc:
        print(f"chatd: cannot mint a token: {exc}", file=sys.stderr)
        return 1
    print(token)
    return 0


def _migrate_store(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    try:
        from chatd.store import migrate
    except ImportError as exc:
        print(f"chatd: migrate-store needs psycopg ({exc}): pip install 'chatd[cluster]'",
              file=sys.stderr)  # fmt: skip
        return 1
    dsn = args.dsn or cfg.store.dsn
    if not dsn:
        print("chatd: migrate-store: give --to DSN, or a config with [store] dsn",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    from chatd.auth import secret_path_for
    from chatd.stomp.logins import stomp_key_path
    from chatd.store.postgres.queries import STOMP_LOGIN_KEY

    source = args.source or config_mod.resolve_store_path(cfg)
    # The node's STOMP login key, kept under this name in a cluster's database
    # (chatd.server), so that logins the node issued stay valid.
    key_file = stomp_key_path(source)
    try:
        shared = {STOMP_LOGIN_KEY: key_file.read_text(encoding="ascii").strip()}
    except FileNotFoundError:
        shared = {}
    shown = [0.0]

    def progress(table: str, done: int, total: int) -> None:
        # Only on a terminal, at most every 2 s: a large file takes minutes.
        now = time.monotonic()
        if sys.stderr.isatty() and now - shown[0] >= 2:
            shown[0] = now
            print(f"chatd: {table}: {done:,} of {total:,}", file=sys.stderr)

    try:
        result = migrate.migrate_store(
            source, dsn, secrets=shared, dry_run=args.dry_run, progress=progress
        )
    except migrate.MigrateError as exc:
        print(f"chatd: migrate-store: {exc}", file=sys.stderr)
        return 1
    print(_migrate_summary(result))
    if result.secrets_copied is not None and not shared:
        print(f"no STOMP login key at {key_file}: logins the node issued will be refused"
              " (clients fetch new ones from /chat-ws/connect)")  # fmt: skip
    jwt_secret = secret_path_for(source)
    if jwt_secret.is_file():
        # The path, never the value.
        print(
            f"the node signed tokens with the secret in {jwt_secret}: give every node"
            " [auth] jwt_secret with its content, or the tokens it issued are refused"
        )
    if result.source_changed:
        print(
            f"chatd: warning: {source} changed during the copy (is its node still "
            "running?): what it wrote after the snapshot is not in PostgreSQL. Stop the "
            "node, empty the target database and migrate again.",
            file=sys.stderr,
        )
    return 0


def _migrate_summary(result: MigrateResult) -> str:
    verb = "dry run, rolled back: would copy" if result.dry_run else "copied"
    lines = [f"{verb} {result.source} into PostgreSQL {result.target} "
             f"in {result.seconds:.2f} s"]  # fmt: skip
    width = max(len(f"{n:,}") for n in result.counts.values())
    for table, n in result.counts.items():
        rate = f"  ({n / result.seconds:,.0f}/s)" if table == "messages" and n else ""
        lines.append(f"  {table:<12} {n:>{width},}{rate}")
    lines.append("next ids: " + ", ".join(f"{t} {i:,}" for t, i in result.next_ids.items()))
    if result.last_message_ids_set is not None:
        lines.append(f"rooms.last_message_id set for {result.last_message_ids_set} room(s)")
    if result.message_clock is not None:
        lines.append(f"message_clock at {result.message_clock:,}")
    for name in result.secrets_copied or ():
        lines.append(f"secret {name} copied")
    for name in result.secrets_kept:
        lines.append(f"secret {name}: the target's own kept (it had one already)")
    if result.nul_replaced:
        lines.append(f"{result.nul_replaced} row(s) had U+0000 in a text, which PostgreSQL "
                     "cannot store: written as U+FFFD")  # fmt: skip
    return "\n".join(lines)


def _settle_gc() -> None:
    # Everything built during start-up (modules, config, rooms) lives as long as the
    # process: frozen, the collector stops walking it on every full collection. Message
    # handling makes short-lived tuples and coroutines by the hundred thousand, so the
    # youngest generation is collected every 20,000 allocations instead of every 700.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def _store_failure(exc: BaseException) -> str | None:
    """Why the store could not be opened, when that is all `exc` says; else None."""
    from chatd.store.errors import StoreError

    if isinstance(exc, BaseExceptionGroup):
        found, rest = exc.split(StoreError)
        if found is None or rest is not None:
            return None
        leaf: BaseException = found
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        exc = leaf
    if not isinstance(exc, StoreError):
        return None
    cause = exc.__cause__
    # The store's own words for clients say "try again"; the cause says why (it names
    # the host and port, never the password of the dsn).
    return " ".join(str(exc if cause is None else cause).split())


async def _serve_main(cfg: config_mod.Config, config_path: str | None) -> int:
    from chatd.net.listeners import ListenError
    from chatd.server import serve
    from chatd.store.errors import StoreError

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            try:
                running = await nursery.start(serve, cfg)
            except ListenError as exc:
                # Caught here, where `start` re-raises it bare, not around the nursery,
                # which would wrap it in an exception group: a taken port is one line
                # for the operator, and nothing was opened yet (serve binds first).
                print(f"chatd: {exc}", file=sys.stderr)
                return EXIT_LISTEN
            except (StoreError, BaseExceptionGroup) as exc:
                # A store that cannot be opened (PostgreSQL unreachable, a newer schema):
                # one line naming why, not a traceback. Anything else is re-raised.
                why = _store_failure(exc)
                if why is None:
                    raise
                print(f"chatd: cannot open the store ({cfg.store.backend}): {why}", file=sys.stderr)
                return EXIT_STORE
            _settle_gc()

            async def watch() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        # Type=notify: systemd shows "reloading" until READY=1 comes back,
                        # which it sends whether or not the new config was accepted.
                        sdnotify.reloading()
                        running.reload(config_path)
                        sdnotify.ready(running.status())
                        continue
                    log.info("received %s", signal.Signals(signum).name)
                    running.shutdown()
                    return

            nursery.start_soon(watch)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
