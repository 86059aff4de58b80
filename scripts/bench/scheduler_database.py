"""The database scripts/bench-scheduler runs its schedulers on (``--db``, ``--database-url``).

* ``sqlite``: ``scheduler.db`` in the bench's temporary directory, opened (and migrated) by
  the one scheduler process itself.
* ``postgresql``: a throwaway cluster in ``postgres/`` of the temporary directory, made and
  removed by scripts/lib.sh's ``nbf_start_postgres`` / ``nbf_stop_postgres`` (which install
  Debian's postgresql package when it is missing and run the server as the system user
  nbfleet-postgres, so they need root). Its log is copied to ``postgres.log`` before the
  cluster is removed.
* ``--database-url URL``: an existing PostgreSQL database, which the bench migrates and then
  expects to hold no projects, hosts or agent secrets (it creates ``bench-*`` ones and leaves
  them there).

Each says what it is for the report (kind, server version, where it came from) and, when the
bench started the server, the CPU seconds that server has used (the database shares the
machine's CPUs with the schedulers and the load generator).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from bench.scheduler_profile import tree_cpu_seconds

log = logging.getLogger("bench-scheduler")

#: Tables a database the bench did not make must have no rows in: what the bench creates.
_MUST_BE_EMPTY = ("projects", "hosts", "agent_secrets")


class BenchDatabase:
    """The SQLite file: nothing to start, the scheduler opens it."""

    kind = "sqlite"
    source = "a file in the temporary directory"

    def __init__(self) -> None:
        #: ``database_url`` for the scheduler config; empty: the SQLite file.
        self.url = ""
        self.version = sqlite3.sqlite_version

    def start(self) -> None:
        """Make the database reachable at :attr:`url` (blocking)."""

    async def check(self) -> None:
        """After migration: learn the server version; refuse a database already in use."""

    def cpu_seconds(self) -> float | None:
        """CPU seconds the database server has used so far; None when not ours to measure."""
        return None

    def stop(self) -> None:
        """Stop what :meth:`start` started; idempotent."""


class ExistingPostgres(BenchDatabase):
    kind = "postgresql"
    source = "--database-url"
    #: Someone else's database may hold data the bench would collide with, or destroy.
    must_be_empty = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.version = "?"

    async def check(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            self.version = await conn.fetchval("SHOW server_version")
            if not self.must_be_empty:
                return
            used = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in _MUST_BE_EMPTY}
        finally:
            await conn.close()
        if any(used.values()):
            found = ", ".join(f"{n} {t}" for t, n in used.items() if n)
            raise SystemExit(
                f"bench-scheduler: the database of --database-url is in use ({found}); the "
                "bench needs an empty one (it creates projects bench-N and hosts "
                "bench-host-N): create a fresh database for it"
            )


class ThrowawayPostgres(ExistingPostgres):
    source = "throwaway cluster"
    must_be_empty = False

    def __init__(self, repo: Path, workdir: Path) -> None:
        super().__init__("")
        self.lib = repo / "scripts" / "lib.sh"
        self.workdir = workdir
        self.dir = workdir / "postgres"
        self._postmaster = 0

    def start(self) -> None:
        if os.geteuid() != 0:
            raise SystemExit(
                "bench-scheduler: --db postgresql starts a throwaway PostgreSQL cluster with "
                "scripts/lib.sh, which runs it as the system user nbfleet-postgres and installs "
                "Debian's postgresql package when missing (apt-get install postgresql): run "
                "the bench as root, or pass --database-url postgresql://USER@HOST:PORT/DB"
            )
        # The server runs as nbfleet-postgres and must reach its directory in ours.
        self.workdir.chmod(0o711)
        done = self._lib(
            'nbf_start_postgres "$1" && printf "%s\\n" "$NBF_POSTGRES_URL"', stdout=True
        )
        if done.returncode != 0 or not done.stdout.strip():
            raise SystemExit(
                "bench-scheduler: the throwaway PostgreSQL cluster did not start (scripts/lib.sh "
                "said why above); it needs Debian's postgresql package (as root: apt-get "
                "install postgresql), or pass --database-url postgresql://USER@HOST:PORT/DB"
            )
        self.url = done.stdout.strip().splitlines()[-1]
        pid_file = self.dir / "data" / "postmaster.pid"
        try:
            self._postmaster = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            log.warning("postgres: no pid in %s; its CPU time is not reported", pid_file)

    def cpu_seconds(self) -> float | None:
        return tree_cpu_seconds(self._postmaster) if self._postmaster else None

    def stop(self) -> None:
        if not self.dir.exists():
            return
        server_log = self.dir / "postgres.log"
        if server_log.exists():
            shutil.copyfile(server_log, self.workdir / "postgres.log")
        if self._lib('nbf_stop_postgres "$1"').returncode != 0:
            log.warning("postgres: nbf_stop_postgres %s failed; stop it by hand", self.dir)
        self._postmaster = 0

    def _lib(self, script: str, *, stdout: bool = False) -> subprocess.CompletedProcess[str]:
        """``script`` in bash with scripts/lib.sh sourced and ``$1`` = the cluster's directory;
        its stderr (lib.sh's log) goes to ours."""
        return subprocess.run(
            ["bash", "-c", f'source "$2"; {script}', "bash", str(self.dir), str(self.lib)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            text=True,
            check=False,
        )


def database_for(db: str, database_url: str | None, repo: Path, workdir: Path) -> BenchDatabase:
    """The database ``--db`` and ``--database-url`` ask for (checked by the option parser)."""
    if db == "sqlite":
        return BenchDatabase()
    if database_url:
        return ExistingPostgres(database_url)
    return ThrowawayPostgres(repo, workdir)
