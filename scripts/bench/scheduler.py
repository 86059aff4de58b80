"""scripts/bench-scheduler: a simulated fleet against real schedulers on this machine.

    scripts/bench-scheduler [--hosts 1000] [--notebooks 5000] [--clients 200] [--duration 10]
                            [--projects 1] [--workers 2] [--long-poll] [--phases LIST]
                            [--db sqlite|postgresql] [--database-url URL] [--replicas 1]
                            [--sql-stats DIR] [--py-spy DIR] [--profile FILE] [--keep] [--json]

Starts this checkout's scheduler (``python -m scheduler.main run``) on 127.0.0.1 with a
temporary directory for its config, database and agent secrets (stderr in ``scheduler.log``
there), writes ``--hosts`` agent secret files (imported into its database at start),
registers that many simulated hosts (``--gpus-per-host`` fake H100s each) with signed
``POST /v1/agents/register``, then measures, one phase after the other:

  placements   ``--notebooks`` one-GPU notebooks submitted at once (``--submit-concurrency``
               requests in flight): notebooks placed per second, from the first submit to the
               last placement. A notebook answered QUEUED is polled until it is STARTING.
  heartbeats   every host sends signed heartbeats back to back on its own connection for
               ``--duration`` seconds: 200 replies per second. Every GPU's memory and
               utilization change at every beat, as a busy GPU's do.
  get          ``--clients`` closed-loop clients GET random placed notebooks for ``--duration``:
               p50 and p99 latency in ms.
  post         the same clients POST CPU notebooks (``gpu=0, cpu=1``; hosts have
               ``--host-cpus`` CPUs each) for ``--duration``: p50 and p99 in ms.

``--db postgresql`` puts the database on a throwaway PostgreSQL cluster in the temporary
directory (bench/scheduler_database.py; root, as scripts/lib.sh makes it) or on an existing,
empty database (``--database-url``), migrated once with ``scheduler.main migrate``. On it,
``--replicas N`` starts N schedulers sharing one config (each its own port and
``scheduler-<n>.log``): user and operator requests go to them in turn, and host i talks to
replica i mod N only (register, heartbeats, long-polls), as real agents stay with the
scheduler that answered. The figures are the whole group's.

Between and during the phases (except the heartbeat phase) the parent keeps the fleet alive as
agents do: one heartbeat per host per interval the scheduler asked for, and with
``--long-poll`` an assignments long-poll held open per host. The timed traffic comes from
``--workers`` load-generator processes, each with its own event loop and a raw keep-alive
HTTP/1.1 client (bench/scheduler_http.py); the load generator shares the machine's CPUs
with the scheduler, and the output says how many processes it used and the CPU seconds each
side spent per phase.

Project quotas are raised for the bench (config defaults, then ``PATCH
/v1/admin/projects/{name}/quota``); a scheduler that answers that with 404/405 and enforces a
smaller quota gets the notebooks spread over enough projects instead. ``--projects N`` spreads
them round-robin over N projects anyway (one project is the worst case for quota accounting).

Prints a table of the six figures with their goals (500 placements/s, 5,000 heartbeats/s) and
figure / goal; ``--json`` prints one JSON object instead (``placements_per_s``,
``heartbeats_per_s``, ``get_p50_ms``, ``get_p99_ms``, ``post_p50_ms``, ``post_p99_ms`` and the
run's context). Where the scheduler's time goes, printed on stderr: ``--sql-stats DIR`` times
every SQL statement per phase (bench/scheduler_sqltrace.py), ``--py-spy DIR`` samples it per
phase with py-spy (a developer tool, not a dependency), ``--profile FILE`` runs it under
cProfile (those three: one scheduler only; ``--sql-stats`` on SQLite only). The
output names the database (and its version) and the number of replicas, and quotes the
schedulers' ERROR log lines. Exits 1 when a notebook was not placed or a phase got errors, 2
when a scheduler died (with the tail of its log).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench import scheduler_fleet as fleet
from bench import scheduler_load as load
from bench import scheduler_report as report
from bench.scheduler_database import BenchDatabase, database_for
from bench.scheduler_http import Api, HttpError, client_for
from bench.scheduler_options import parse
from bench.scheduler_profile import (
    PySpy,
    machine_busy_seconds,
    print_cprofile,
    summarize_collapsed,
    summarize_sql,
)
from bench.scheduler_projects import make_projects
from bench.scheduler_server import (
    EDITOR,
    FRAMEWORK,
    SchedulerDied,
    SchedulerReplicas,
    checkout_commit,
    raise_fd_limit,
)
from scheduler.secrets import ensure_admin_token, new_agent_secret, write_agent_secret_file

log = logging.getLogger("bench-scheduler")

REPO = Path(__file__).resolve().parents[2]
HOST_MEMORY_MB = 2_000_000


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, database: BenchDatabase) -> None:
        self.args = args
        self.workdir = workdir
        self.database = database
        self.replicas = SchedulerReplicas(
            REPO,
            workdir,
            args.replicas,
            log_level=args.scheduler_log_level,
            profile_to=args.profile,
            sql_stats_dir=args.sql_stats,
        )
        self.ports = self.replicas.ports
        # Setup and verification calls go to the replicas in turn too.
        self.api = Api(client_for(self.ports))
        self.admin = ""
        self.figures: dict[str, Any] = {
            "database": database.kind,
            "database_source": database.source,
            "database_version": database.version,
            "replicas": args.replicas,
            "hosts": args.hosts,
            "gpus_per_host": args.gpus_per_host,
            "notebooks": args.notebooks,
            "clients": args.clients,
            "duration_s": args.duration,
            "load_processes": args.workers,
            "long_poll": args.long_poll,
            "cpus": os.cpu_count(),
            "commit": checkout_commit(REPO),
            "statuses": {},
            "scheduler_cpu_s": {},
            "database_cpu_s": {},
            "loadgen_cpu_s": {},
            "other_cpu_s": {},
            "problems": [],
        }
        self.hosts: list[fleet.SimHost] = []
        self.tokens: list[str] = []
        self.placed: list[tuple[str, str]] = []
        self.py_spy = PySpy(args.py_spy) if args.py_spy is not None else None
        self.sql: dict[str, dict[str, list[float]]] = {}

    def stop(self) -> None:
        """Stop the schedulers, then the database; note the ERROR lines of their logs."""
        self.replicas.stop()
        self.database.stop()
        self.figures["scheduler_log_errors"] = self.replicas.log_errors()

    # ------------------------------------------------------------ helpers

    def problem(self, message: str) -> None:
        log.warning("%s", message)
        self.figures["problems"].append(message)

    async def jobs(self, pool: ProcessPoolExecutor, phase: str, kind: str, specs: list[dict]):
        """Run one job per spec in the pool, check the schedulers, and note the CPU seconds the
        schedulers, the database server (when the bench started it), the load generator and
        everything else on the machine used meanwhile."""
        first = self.replicas.processes[0]  # the one --sql-stats and --py-spy follow
        scheduler_before = self.replicas.cpu_seconds()
        database_before = self.database.cpu_seconds()
        machine_before = machine_busy_seconds()
        parent_before = time.process_time()
        await first.sql_stats()
        if self.py_spy is not None:
            self.py_spy.start(first.pid, phase)
        futures = [asyncio.wrap_future(pool.submit(load.run_job, kind, spec)) for spec in specs]
        try:
            results = await asyncio.gather(*futures)
        except HttpError:
            self.replicas.check_alive(grace_s=3.0)
            raise
        finally:
            if self.py_spy is not None:
                self.py_spy.stop()
        self.replicas.check_alive()
        scheduler_cpu = self.replicas.cpu_seconds() - scheduler_before
        database_after = self.database.cpu_seconds()
        database_cpu = 0.0
        if database_before is not None and database_after is not None:
            database_cpu = database_after - database_before
            self.figures["database_cpu_s"][phase] = round(database_cpu, 2)
        if self.args.sql_stats is not None:
            self.sql[phase] = await first.sql_stats()
        loadgen_cpu = sum(r["loadgen_cpu_s"] for r in results)
        loadgen_cpu += time.process_time() - parent_before
        ours = scheduler_cpu + database_cpu + loadgen_cpu
        others = machine_busy_seconds() - machine_before - ours
        self.figures["scheduler_cpu_s"][phase] = round(scheduler_cpu, 2)
        self.figures["loadgen_cpu_s"][phase] = round(loadgen_cpu, 2)
        self.figures["other_cpu_s"][phase] = round(max(0.0, others), 2)
        statuses = report.merge_statuses(r["statuses"] for r in results)
        self.figures["statuses"][phase] = statuses
        return results

    def start_at(self) -> float:
        # Time for every load process to open its connections before the clock starts.
        return time.time() + 1.0 + self.args.clients / 500

    # ------------------------------------------------------------ setup

    async def setup(self, pool: ProcessPoolExecutor) -> None:
        self.replicas.write_config(self.database.url)
        if self.database.kind != "sqlite":
            # SQLite migrates at start; PostgreSQL once, before any replica runs.
            log.info("%s", self.replicas.migrate())
        await self.database.check()
        self.figures["database_version"] = self.database.version
        self.admin = ensure_admin_token(self.workdir / "admin.token")
        secrets_dir = self.workdir / "agents"
        # Written as files into the server's agent_secrets_dir before it starts: the
        # scheduler imports them into its database at start, as on an upgrade.
        self.hosts = []
        for i in range(self.args.hosts):
            host_id = f"bench-host-{i:05d}"
            secret = new_agent_secret()
            write_agent_secret_file(secrets_dir, host_id, secret)
            port = self.ports[i % len(self.ports)]
            self.hosts.append(fleet.SimHost(id=host_id, secret=secret.encode(), port=port))
        await self.replicas.start()
        projects = await make_projects(
            self.api, self.admin, self.args.projects, self.args.notebooks
        )
        self.tokens = projects.tokens
        self.figures.update(projects=len(projects.tokens), quota=projects.quota)
        results = await self.jobs(
            pool,
            "register",
            "register",
            [
                {
                    "hosts": part,
                    "gpus": self.args.gpus_per_host,
                    "cpus": self.args.host_cpus,
                    "memory_mb": HOST_MEMORY_MB,
                    "concurrency": 50,
                }
                for part in load.split(self.hosts, self.args.workers)
            ],
        )
        registered = self.figures["statuses"]["register"].get("200", 0)
        if registered != len(self.hosts):
            raise SystemExit(
                f"bench-scheduler: only {registered} of {len(self.hosts)} hosts registered: "
                f"{self.figures['statuses']['register']}\n{self.replicas.log_tail()}"
            )
        elapsed = max(r["finished"] for r in results) - min(r["started"] for r in results)
        self.figures["registrations_per_s"] = registered / elapsed if elapsed > 0 else 0.0
        self.figures["heartbeat_interval_s"] = max(r["heartbeat_interval_s"] for r in results)

    # ------------------------------------------------------------ phases

    async def placements(self, pool: ProcessPoolExecutor) -> None:
        body = json.dumps({"framework": FRAMEWORK, "editor": EDITOR, "gpu": 1}).encode()
        requests = [(self.tokens[i % len(self.tokens)], body) for i in range(self.args.notebooks)]
        parts = load.split(requests, self.args.workers)
        concurrency = load.shares(self.args.submit_concurrency, len(parts))
        start_at = self.start_at()
        results = await self.jobs(
            pool,
            "placements",
            "submit",
            [
                {
                    "ports": self.ports,
                    "requests": part,
                    "concurrency": share,
                    "start_at": start_at,
                    "placed_within_s": self.args.placed_within,
                }
                for part, share in zip(parts, concurrency, strict=True)
            ],
        )
        placed_at = [t for r in results for t in r["placed_at"]]
        self.placed = [tuple(p) for r in results for p in r["placed"]]
        started = min(r["started"] for r in results)
        rate, elapsed = report.placement_rate(placed_at, started)
        self.figures.update(
            placements_per_s=rate,
            placement_s=elapsed,
            notebooks_placed=len(placed_at),
            submit_s=max(r["submitted"] for r in results) - started,
            states_at_submit=report.merge_statuses(r["states_at_submit"] for r in results),
        )
        if len(placed_at) != self.args.notebooks:
            queued = sum(r["still_queued"] for r in results)
            errors = [e for r in results for e in r["errors"]][:3]
            self.problem(
                f"{len(placed_at)} of {self.args.notebooks} notebooks placed "
                f"({queued} still QUEUED after {self.args.placed_within:.0f}s); {errors}"
            )

    async def heartbeats(self, pool: ProcessPoolExecutor, idle: fleet.IdleFleet) -> None:
        idle.pause()
        try:
            start_at = self.start_at()
            await self.jobs(
                pool,
                "heartbeats",
                "heartbeat",
                [
                    {
                        "hosts": part,
                        "gpus": self.args.gpus_per_host,
                        "start_at": start_at,
                        "duration_s": self.args.duration,
                    }
                    for part in load.split(self.hosts, self.args.workers)
                ],
            )
        finally:
            idle.resume()
        ok = self.figures["statuses"]["heartbeats"].get("200", 0)
        self.figures["heartbeats_per_s"] = ok / self.args.duration
        self._check_errors("heartbeats")

    async def latency(self, pool: ProcessPoolExecutor, kind: str) -> None:
        if kind == "get":
            if not self.placed:
                raise SystemExit("bench-scheduler: the get phase needs placed notebooks")
            targets: list[Any] = list(self.placed)
            key = "targets"
        else:
            body = json.dumps({"framework": FRAMEWORK, "editor": EDITOR, "gpu": 0, "cpu": 1})
            targets = [(token, body.encode()) for token in self.tokens]
            key = "requests"
        start_at = self.start_at()
        workers = min(self.args.workers, self.args.clients)
        results = await self.jobs(
            pool,
            kind,
            kind,
            [
                {
                    "ports": self.ports,
                    "clients": share,
                    key: targets,
                    "start_at": start_at,
                    "duration_s": self.args.duration,
                }
                for share in load.shares(self.args.clients, workers)
            ],
        )
        latencies = [ms for r in results for ms in r["latencies_ms"]]
        self.figures[f"{kind}_p50_ms"] = report.percentile(latencies, 50)
        self.figures[f"{kind}_p99_ms"] = report.percentile(latencies, 99)
        self.figures[f"{kind}_requests"] = len(latencies)
        self.figures[f"{kind}_per_s"] = len(latencies) / self.args.duration
        self._check_errors(kind, [e for r in results for e in r["errors"]])

    def _check_errors(self, phase: str, samples: list[str] | None = None) -> None:
        statuses = self.figures["statuses"][phase]
        odd = {s: n for s, n in statuses.items() if not s.startswith("2")}
        if odd:
            self.problem(f"{phase}: non-2xx replies {odd}; e.g. {(samples or [])[:2]}")

    async def verify(self) -> None:
        """Count, through the user API, the placed 1-GPU notebooks and the distinct GPUs they
        hold: every notebook the placement phase saw placed must have a GPU of its own. Done
        once for the whole database, whichever replica placed each notebook."""
        holders = 0
        gpus: set[str] = set()
        for token in self.tokens:
            status, body = await self.api.call("GET", "/v1/notebooks?state=STARTING", token=token)
            if status != 200:
                self.problem(f"GET /v1/notebooks?state=STARTING answered {status}: {body}")
                return
            for notebook in body["items"]:
                if notebook["gpu"] == 1 and notebook.get("host"):
                    holders += 1
                    gpus.update(g["uuid"] for g in notebook.get("gpus", []))
        self.figures["gpus_reserved"] = len(gpus)
        placed = self.figures.get("notebooks_placed", 0)
        if "placements" in self.phases and not (holders == len(gpus) == placed):
            self.problem(
                f"{placed} notebooks seen placed, but {holders} 1-GPU notebooks are STARTING "
                f"on a host holding {len(gpus)} distinct GPUs"
            )

    # ------------------------------------------------------------ run

    @property
    def phases(self) -> list[str]:
        return [p for p in self.args.phases.split(",") if p]

    async def run(self) -> dict[str, Any]:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.args.workers, mp_context=context) as pool:
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(loop.run_in_executor(pool, load.warm_up, 0.5) for _ in range(self.args.workers))
            )
            await self.setup(pool)
            idle = fleet.IdleFleet(
                self.hosts,
                self.args.gpus_per_host,
                self.figures["heartbeat_interval_s"],
                long_poll=self.args.long_poll,
            )
            idle.start()
            try:
                if "placements" in self.phases:
                    await self.placements(pool)
                if "heartbeats" in self.phases:
                    await self.heartbeats(pool, idle)
                if "get" in self.phases:
                    await self.latency(pool, "get")
                if "post" in self.phases:
                    await self.latency(pool, "post")
                await self.verify()
            finally:
                await idle.stop()
            self.figures["statuses"]["fleet_heartbeats"] = report.merge_statuses([idle.heartbeats])
            if idle.long_poll:
                self.figures["statuses"]["fleet_long_polls"] = report.merge_statuses([idle.polls])
            for failure in idle.failures:
                self.problem(f"background fleet: {failure}")
        for key in report.HEADLINE:
            self.figures.setdefault(key, None)
        self.figures.setdefault("notebooks_placed", 0)
        self.figures.setdefault("placement_s", 0.0)
        self.figures.setdefault("get_requests", 0)
        self.figures.setdefault("post_requests", 0)
        self.figures.setdefault("gpus_reserved", None)
        return self.figures


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("bench-scheduler: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="nbfleet-bench-scheduler-"))
    bench = Bench(args, workdir, database_for(args.db, args.database_url, REPO, workdir))
    failed = True
    try:
        bench.database.start()
        figures = asyncio.run(bench.run())
        failed = bool(figures["problems"])
    except SchedulerDied as exc:
        print(f"bench-scheduler: {exc}", file=sys.stderr)
        print(f"bench-scheduler: kept {workdir}", file=sys.stderr)
        return 2
    finally:
        bench.stop()
        if args.keep or failed:
            log.info("temporary directory kept: %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(report.to_json(figures))
    else:
        print(report.format_table(figures))
        print()
        print(report.format_details(figures))
    if args.profile is not None:
        print_cprofile(args.profile)
    for phase, stats in bench.sql.items():
        print("\n" + summarize_sql(phase, stats), file=sys.stderr)
    if bench.py_spy is not None:
        for path in bench.py_spy.outputs.values():
            if path.exists():
                print("\n" + summarize_collapsed(path), file=sys.stderr)
    return 1 if failed else 0
