"""scripts/bench-scheduler's command line: the options, their defaults, and the checks of the
combinations that cannot work (each refused with a message naming the options involved)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from urllib.parse import urlsplit

PHASES = ("placements", "heartbeats", "get", "post")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench-scheduler",
        description="simulated fleet of signed agents and users against local schedulers",
    )
    parser.add_argument("--hosts", type=int, default=1000, help="simulated agents (1000)")
    parser.add_argument("--gpus-per-host", type=int, default=8, help="fake GPUs per host (8)")
    parser.add_argument("--host-cpus", type=int, default=128, help="CPUs per host (128)")
    parser.add_argument(
        "--notebooks", type=int, default=5000, help="1-GPU notebooks submitted at once (5000)"
    )
    parser.add_argument(
        "--projects",
        type=int,
        default=1,
        help="projects the notebooks are spread over, round-robin (1: one big project)",
    )
    parser.add_argument(
        "--submit-concurrency", type=int, default=200, help="submissions in flight (200)"
    )
    parser.add_argument(
        "--clients", type=int, default=200, help="concurrent clients for GET/POST latency (200)"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of heartbeats, GETs, POSTs (10)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="load-generator processes for timed phases (2)"
    )
    parser.add_argument(
        "--long-poll", action="store_true", help="hosts also hold assignment long-polls open"
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (get needs placements)",
    )
    parser.add_argument(
        "--placed-within",
        type=float,
        default=120.0,
        help="seconds QUEUED notebooks get to be placed after the last submit (120)",
    )
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgresql"),
        help="the schedulers' database: sqlite (a file; the default) or postgresql (a "
        "throwaway cluster the bench starts, or --database-url)",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="use this existing, empty PostgreSQL database (postgresql://USER@HOST:PORT/DB) "
        "instead of a throwaway cluster; implies --db postgresql",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="scheduler processes on the one database (1; more need --db postgresql)",
    )
    parser.add_argument("--profile", type=Path, help="run the scheduler under cProfile into FILE")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="sample the scheduler with py-spy during each phase into DIR/<phase>.txt",
    )
    parser.add_argument(
        "--sql-stats",
        type=Path,
        metavar="DIR",
        help="time every SQL statement the scheduler runs, per phase, into DIR (SQLite only)",
    )
    parser.add_argument("--scheduler-log-level", default="INFO", help="scheduler --log-level")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked, with ``db`` resolved and the output paths absolute (the
    ``--sql-stats`` directory emptied). Raises SystemExit with a message for combinations
    that cannot work."""
    args = parser().parse_args(argv)
    counts = (args.hosts, args.notebooks, args.clients, args.workers, args.submit_concurrency)
    if min(*counts, args.projects, args.replicas) < 1:
        raise SystemExit("bench-scheduler: counts must be at least 1")
    unknown = {p for p in args.phases.split(",") if p} - set(PHASES)
    if unknown:
        raise SystemExit(f"bench-scheduler: unknown phase(s) {sorted(unknown)}")
    if args.database_url is not None:
        if urlsplit(args.database_url).scheme not in ("postgresql", "postgres"):
            raise SystemExit(
                "bench-scheduler: --database-url must be postgresql://USER@HOST[:PORT]/DB "
                "(the bench makes its SQLite database itself)"
            )
        if args.db == "sqlite":
            raise SystemExit(
                "bench-scheduler: --database-url names a PostgreSQL database; it cannot go "
                "with --db sqlite"
            )
    if args.db is None:
        args.db = "postgresql" if args.database_url else "sqlite"
    if args.replicas > 1 and args.db != "postgresql":
        raise SystemExit(
            f"bench-scheduler: --replicas {args.replicas} needs --db postgresql (a SQLite "
            "database serves one scheduler process)"
        )
    if args.sql_stats is not None and args.db != "sqlite":
        raise SystemExit(
            "bench-scheduler: --sql-stats times the scheduler's sqlite3 statements; it has "
            "nothing to time with --db postgresql"
        )
    for option, value in (("--profile", args.profile), ("--py-spy", args.py_spy)):
        if value is not None and args.replicas > 1:
            raise SystemExit(
                f"bench-scheduler: {option} follows one scheduler process; it cannot go with "
                f"--replicas {args.replicas}"
            )
    if args.profile is not None:
        args.profile = args.profile.resolve()
    if args.sql_stats is not None:
        args.sql_stats = args.sql_stats.resolve()
        shutil.rmtree(args.sql_stats, ignore_errors=True)
    return args
