"""A Debian machine with systemd as PID 1, in a container on the real dockerd, for testing
nbfleet's units under the systemd that runs them in production.

The image is ``nbfleet/systemd-host:latest`` (``scripts/build-images --only systemd``): Debian
bookworm, systemd, sudo, and the venv ``/opt/nbfleet`` with nbfleet's dependencies but not
nbfleet itself, which the test installs from its checkout.

How the machine is started, and why:

* ``--cap-add SYS_ADMIN --security-opt seccomp=unconfined --tmpfs /run --tmpfs /run/lock
  -v /sys/fs/cgroup:/sys/fs/cgroup:ro`` instead of ``--privileged`` (which these machines
  refuse): systemd mounts its file systems and each unit's sandbox (``ProtectSystem=``,
  ``PrivateTmp=``...) in mount namespaces, which needs CAP_SYS_ADMIN and system calls
  Docker's seccomp profile denies; it wants /run and /run/lock as tmpfs; it finds its cgroup
  through /sys/fs/cgroup.
* ``-t``: systemd writes its boot messages to the console, which ``docker logs`` then
  keeps (a machine that fails to boot says why there, and nowhere else).
* ``--network host``: the machine is one more host on this one. The agent in it reaches the
  scheduler, the S3 server and the editor ports dockerd publishes on 127.0.0.1 exactly as a
  process on the host does, and the test reaches the scheduler at the same address.
* ``/var/run/docker.sock`` mounted: the agent drives the host's dockerd. Paths the agent
  hands to Docker (bind mounts of workspaces, scratch and volumes) are resolved by dockerd on
  the host, so the ``shared`` directories are mounted at identical paths on both sides.

``Machine.boot`` waits (with a deadline) for ``systemctl is-system-running`` to say
``running``; a machine that ends ``degraded`` or never gets there fails the test with the
failed units and their journal. Nothing here skips.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SYSTEMD_IMAGE = "nbfleet/systemd-host:latest"

#: The flags that let systemd boot as PID 1 without --privileged (see the module docstring).
BOOT_FLAGS = [
    "--cap-add",
    "SYS_ADMIN",
    "--security-opt",
    "seccomp=unconfined",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:ro",
]


def require_images(*tags: str) -> None:
    """Fail (never skip) naming the command that builds a missing image."""
    for tag in tags:
        found = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, text=True)
        if found.returncode != 0:
            raise AssertionError(
                f"image {tag} is missing (docker: {found.stderr.strip()}); build it with "
                "scripts/build-images --only systemd (and --only tiny for nbfleet/tiny), "
                "as scripts/test does"
            )


@dataclass
class Machine:
    """One booted machine. ``sh`` runs a bash script in it as root; the ``systemctl`` and
    ``journal`` helpers read what systemd knows; ``dump`` gathers it all for a failure."""

    name: str
    units: list[str] = field(default_factory=list)
    booted: bool = False

    def boot(self, *, shared: list[Path], mounts: dict[Path, str], timeout_s: float = 60.0) -> None:
        """Start the machine with ``shared`` host directories at the same path and ``mounts``
        (host path: path in the machine) besides, and wait until systemd is up. The label
        finds a machine a killed test run left behind (``docker ps --filter label=...``)."""
        volumes: list[str] = ["-v", "/var/run/docker.sock:/run/docker.sock"]
        for path in shared:
            volumes += ["-v", f"{path}:{path}"]
        for source, target in mounts.items():
            volumes += ["-v", f"{source}:{target}"]
        started = subprocess.run(
            ["docker", "run", "-d", "-t", "--name", self.name]
            + ["--label", "org.nbfleet.test=systemd", "--network", "host"]
            + [*BOOT_FLAGS, *volumes, SYSTEMD_IMAGE],
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            raise AssertionError(f"docker run of {SYSTEMD_IMAGE} failed: {started.stderr}")
        self.booted = True
        self._wait_running(timeout_s)

    def _wait_running(self, timeout_s: float) -> None:
        # Until systemd has made its private socket, systemctl cannot connect at all; then
        # `is-system-running --wait` blocks until start-up is over and says how it went.
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline and state not in ("running", "degraded"):
            if not self.up():
                state = "the container exited"
                break
            left = deadline - time.monotonic()
            result = self.sh("systemctl is-system-running --wait", check=False, timeout=left)
            said = (result.stdout + result.stderr).split()
            state = said[-1] if result.stdout.strip() else " ".join(said)
            if state not in ("running", "degraded"):
                time.sleep(0.2)
        if state != "running":
            raise AssertionError(
                f"systemd in {self.name} did not reach 'running' within {timeout_s:.0f}s "
                f"(last: {state!r}); booted with {' '.join(BOOT_FLAGS)}\n{self.dump()}"
            )

    def up(self) -> bool:
        status = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", self.name],
            capture_output=True,
            text=True,
        )
        return status.stdout.strip() == "true"

    def sh(
        self,
        script: str,
        *,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with ``bash -euo pipefail`` as root; ``check`` fails the test with
        its output when it exits non-zero."""
        args = ["docker", "exec"]
        for name, value in (env or {}).items():
            args += ["-e", f"{name}={value}"]
        args += [self.name, "bash", "-euo", "pipefail", "-c", script]
        try:
            result = subprocess.run(args, capture_output=True, text=True, timeout=max(timeout, 1))
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"in {self.name}, timed out after {timeout:.0f}s: {script}"
            ) from exc
        if check and result.returncode != 0:
            raise AssertionError(
                f"in {self.name}, exit {result.returncode}: {script}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` of ``properties`` (ActiveState, Result, MainPID, NRestarts...)."""
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, invocation: str = "") -> str:
        """The unit's journal; only one run of it with ``invocation`` (its InvocationID)."""
        match = f"_SYSTEMD_INVOCATION_ID={invocation}" if invocation else ""
        return self.sh(f"journalctl -u {unit} {match} --no-pager -o cat", check=False).stdout

    def failed_units(self) -> list[str]:
        out = self.sh("systemctl list-units --failed --plain --no-legend", check=False).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def dump(self) -> str:
        if not self.booted:
            return f"----- machine {self.name} never started -----"
        # Its console (the -t): systemd's own messages, the only ones when it failed to boot.
        console = subprocess.run(
            ["docker", "logs", "--tail", "40", self.name], capture_output=True, text=True
        )
        parts = [f"----- console of machine {self.name} (last 40 lines) -----"]
        parts.append(re.sub(r"\x1b\[[0-9;]*m", "", console.stdout + console.stderr))
        if not self.up():
            return "\n".join(parts)
        parts.append(f"----- machine {self.name}: systemctl --failed -----")
        parts.append(self.sh("systemctl --failed --no-pager", check=False).stdout)
        for unit in self.units:
            status = self.sh(f"systemctl status {unit} --no-pager -n 0", check=False)
            parts.append(f"----- systemctl status {unit} -----\n{status.stdout}{status.stderr}")
            lines = self.journal(unit).splitlines()[-120:]
            parts.append(f"----- journal of {unit} (last {len(lines)} lines) -----")
            parts.extend(lines)
        boot = self.sh("journalctl -b -p warning --no-pager -n 40", check=False).stdout
        parts.append(f"----- warnings of this boot -----\n{boot}")
        return "\n".join(parts)

    def remove(self) -> None:
        # SIGKILL of the whole machine: its systemd's shutdown is not what is tested, and the
        # units' own stops have been by then.
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True)
        self.booted = False
