"""``nbfleet-scheduler``: run the API server, migrate its database, provision agent secrets,
show the admin token."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import uvloop
from aiohttp import web

from common.config import ConfigError, SchedulerConfig, load, split_hostport
from scheduler.db import MigrationsPending, database_for
from scheduler.secrets import ensure_admin_token, ensure_agent_secret

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
    add_host = sub.add_parser("add-host", help="create (or keep) an agent's secret and print it")
    add_host.add_argument("host", help="host id, as the agent's host_id")
    admin = sub.add_parser("admin-token", help="print the admin token, creating it if absent")
    for command in (run, migrate, add_host, admin):
        command.add_argument("--config", required=True, help="scheduler TOML file")
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
    try:
        config = load(SchedulerConfig, args.config, env_prefix=ENV_PREFIX)
    except ConfigError as exc:
        print(f"nbfleet-scheduler: {exc}", file=sys.stderr)
        return 2
    if args.command == "add-host":
        try:
            print(ensure_agent_secret(config.agent_secrets_dir, args.host))
        except (ValueError, OSError) as exc:
            print(f"nbfleet-scheduler: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "migrate":
        return _migrate(config)
    if args.command == "admin-token":
        try:
            print(ensure_admin_token(config.admin_token_file))
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
        web.run_app(
            create_app(config),
            host=host,
            port=port,
            print=None,
            access_log=None,
            shutdown_timeout=5,
            # libuv's loop: every HTTP request, and on PostgreSQL every statement's answer, is
            # a wake-up of the loop, and uvloop makes each of them cheaper (see bench-scheduler).
            loop=uvloop.new_event_loop(),
        )
    except MigrationsPending as exc:
        print(
            f"nbfleet-scheduler: the database {exc.where} lacks the migrations "
            f"{', '.join(exc.missing)}; apply them first with: "
            f"nbfleet-scheduler migrate --config {args.config}",
            file=sys.stderr,
        )
        return 2
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
