"""``nbfleet-scheduler``: run the API server, migrate its database, copy it from SQLite to
PostgreSQL (:mod:`scheduler.copy_db`), provision agent secrets, show the admin token."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from common.config import ConfigError, SchedulerConfig, load, split_hostport
from common.http_server import serve
from scheduler.agent_secrets import SecretsKeyMismatch, add_host
from scheduler.db import MigrationsPending, database_for
from scheduler.secrets import ensure_admin_token, ensure_metrics_token, ensure_router_token

ENV_PREFIX = "NBFLEET_SCHEDULER_"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbfleet-scheduler", description="nbfleet scheduler: places notebooks on GPU hosts"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the API")
    migrate = sub.add_parser(
        "migrate",
        help="apply the database's pending migrations (PostgreSQL: before `run`, after an upgrade)",
    )
    adding = sub.add_parser(
        "add-host", help="create (or keep) an agent's secret in the database and print it"
    )
    adding.add_argument("host", help="host id, as the agent's host_id")
    admin = sub.add_parser("admin-token", help="print the admin token, creating it if absent")
    router = sub.add_parser(
        "router-token", help="print the token routers use (nbfleet-router), creating it if absent"
    )
    scrape = sub.add_parser(
        "metrics-token",
        help="print the token Prometheus scrapes /metrics with, creating it if absent",
    )
    for command in (run, migrate, adding, admin, router, scrape):
        command.add_argument("--config", required=True, help="scheduler TOML file")
    copy_db = sub.add_parser(
        "copy-db",
        help="copy an installation's whole state from SQLite into an empty PostgreSQL database",
        description="Copy every row of the scheduler's SQLite database into a PostgreSQL "
        "database migrated with `nbfleet-scheduler migrate` and still empty. Stop the "
        "scheduler first: what it writes after the copy begins is not copied.",
    )
    copy_db.add_argument("--from", dest="from_url", required=True, help="sqlite:///path")
    copy_db.add_argument("--to", dest="to_url", required=True, help="postgresql://...")
    run.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(getattr(args, "log_level", "WARNING"))
    if args.command == "copy-db":
        return _copy_db(args.from_url, args.to_url)
    try:
        config = load(SchedulerConfig, args.config, env_prefix=ENV_PREFIX)
    except ConfigError as exc:
        print(f"nbfleet-scheduler: {exc}", file=sys.stderr)
        return 2
    if args.command == "add-host":
        return _add_host(config, args.host, args.config)
    if args.command == "migrate":
        return _migrate(config)
    if args.command in ("admin-token", "router-token", "metrics-token"):
        try:
            if args.command == "admin-token":
                print(ensure_admin_token(config.admin_token_file))
            elif args.command == "router-token":
                print(ensure_router_token(config))
            else:
                print(ensure_metrics_token(config))
        except (ValueError, OSError) as exc:
            print(f"nbfleet-scheduler: {exc}", file=sys.stderr)
            return 2
        return 0
    from scheduler.app import create_app

    try:
        host, port = split_hostport(config.listen)
    except ConfigError as exc:
        print(f"nbfleet-scheduler: {exc}", file=sys.stderr)
        return 2
    try:
        serve(create_app(config), host, port)
    except MigrationsPending as exc:
        return _pending(exc, args.config)
    except SecretsKeyMismatch as exc:
        print(f"nbfleet-scheduler: {exc}", file=sys.stderr)
        return 2
    return 0


def _add_host(config: SchedulerConfig, host_id: str, config_file: str) -> int:
    """Create (or keep) the host's secret in the database and print it; 2 for a bad host id,
    key file or unmigrated database, 1 when the database cannot be reached."""
    try:
        print(asyncio.run(add_host(config, host_id)))
    except MigrationsPending as exc:
        return _pending(exc, config_file)
    except (ValueError, OSError, SecretsKeyMismatch) as exc:
        print(f"nbfleet-scheduler: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # any driver's error: said in one line, with its kind
        print(f"nbfleet-scheduler: add-host failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _pending(exc: MigrationsPending, config_file: str) -> int:
    print(
        f"nbfleet-scheduler: the database {exc.where} lacks the migrations "
        f"{', '.join(exc.missing)}; apply them first with: "
        f"nbfleet-scheduler migrate --config {config_file}",
        file=sys.stderr,
    )
    return 2


def _migrate(config: SchedulerConfig) -> int:
    """Apply what is pending and say what was done; 1 when the database cannot be reached or
    a migration fails (nothing of that migration is kept)."""
    database = database_for(config)
    try:
        applied = asyncio.run(database.migrate())
    except Exception as exc:  # any driver's error: said in one line, with its kind
        print(
            f"nbfleet-scheduler: migrating {database.where} failed: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    if applied:
        print(f"{database.where}: applied {', '.join(applied)}")
    else:
        print(f"{database.where}: up to date")
    return 0


def _copy_db(from_url: str, to_url: str) -> int:
    """Copy and report rows per table; 2 when refused, 1 when a database fails midway (the
    target's transaction is rolled back: it stays empty)."""
    from scheduler.copy_db import STOPPED_NOTE, CopyRefused, copy_database

    print(f"nbfleet-scheduler copy-db: {STOPPED_NOTE}")
    try:
        copied = asyncio.run(copy_database(from_url, to_url, say=print))
    except CopyRefused as exc:
        print(f"nbfleet-scheduler: copy-db refused: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # any driver's error: said in one line, with its kind
        print(f"nbfleet-scheduler: copy-db failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    total = sum(copied.rows.values())
    print(
        f"copied {total} rows in {len(copied.rows)} tables from {copied.source} to "
        f"{copied.target} (both at {copied.level}); point the scheduler's database_url at the "
        "target and start it"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
