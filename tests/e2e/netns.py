"""Network namespaces for end-to-end tests: each part of a cluster on an address of its own, as
separate hosts would be, on a bridge of the test's own.

A :class:`Topology` is one Linux bridge in the root namespace holding the first address of a
private /24 (``10.231.N.1``, ``N`` the first one no root-namespace interface uses yet) and one
namespace per part, joined to the bridge by a veth pair (``eth0`` inside) with the next
addresses (``.2``, ``.3``, ...) and its loopback up. There is no default route: a namespace
reaches the other namespaces and the root namespace's address on the bridge, nothing else.

dockerd's ``br_netfilter`` sends frames crossing a bridge through iptables' FORWARD chain, whose
policy dockerd sets to DROP, so :meth:`Topology.up` inserts one rule accepting traffic from the
bridge to itself (``-i BR -o BR``) in ``DOCKER-USER`` (``FORWARD`` when dockerd made no such
chain), tagged with a comment naming the topology. Nothing else is needed for a namespace to
reach a container port published on the root namespace's bridge address: dockerd's own rules
accept the DNATed connection.

Names carry the owning process's pid: namespaces ``nbfns-<pid>-<part>``, the bridge
``nbfns<pid hex>``, host-side veths ``nbv<pid hex>-<i>`` (their peers ``nbp<pid hex>-<i>`` until
moved in and renamed ``eth0``), the iptables comment ``nbfns-<pid>``.
:meth:`Topology.down` removes everything of its own, step by step even when one fails (killing
what still runs in its namespaces first), and raises naming what it could not remove;
:func:`clean_leftovers` does the same for owners that are no longer alive (a run killed before
its teardown). Everything here needs root.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

PREFIX = "nbfns"
#: The private range subnets are taken from: 10.231.N.0/24.
SUPERNET = ipaddress.ip_network("10.231.0.0/16")
FORWARD_CHAINS = ("DOCKER-USER", "FORWARD")

_NETNS = re.compile(rf"^{PREFIX}-(\d+)-")
_BRIDGE = re.compile(rf"^{PREFIX}([0-9a-f]+)$")
_VETH = re.compile(r"^nb[vp]([0-9a-f]+)-\d+$")
_COMMENT = re.compile(rf"--comment \"?{PREFIX}-(\d+)\"?")


def missing_tools() -> list[str]:
    """What this module needs and the machine lacks, said for a failure message."""
    missing = []
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            missing.append(f"`{tool}` (Debian package {package})")
    if os.geteuid() != 0:
        missing.append("root (network namespaces, bridges and iptables rules need it)")
    return missing


def _cmd(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    # `ip netns list` prints "NAME" or "NAME (id: N)".
    return [line.split()[0] for line in _cmd("ip", "netns", "list").stdout.splitlines() if line]


def _links() -> list[str]:
    out = _cmd("ip", "-o", "link", "show").stdout
    # "7: nbv1a2b-0@if6: <...>": the name ends at "@" or ":".
    return [re.split(r"[@:]", line.split(": ", 1)[1], maxsplit=1)[0] for line in out.splitlines()]


def _forward_chains() -> list[str]:
    return [c for c in FORWARD_CHAINS if _cmd("iptables", "-S", c, check=False).returncode == 0]


def _tagged_rules(owner: int | None = None) -> list[tuple[str, list[str], int]]:
    """(chain, rule as ``-A ...`` arguments, owner) of every rule tagged by a topology."""
    rules = []
    for chain in _forward_chains():
        for line in _cmd("iptables", "-S", chain).stdout.splitlines():
            match = _COMMENT.search(line)
            if match and line.startswith("-A ") and (owner is None or int(match[1]) == owner):
                rules.append((chain, line.split(), int(match[1])))
    return rules


def _kill_inside(namespace: str) -> None:
    """SIGKILL what still runs in ``namespace`` (what its owner started and did not stop)."""
    result = _cmd("ip", "netns", "pids", namespace, check=False)
    pids = [int(p) for p in result.stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _remove(namespaces: Sequence[str], links: Sequence[str], owner: int | None) -> list[str]:
    """Remove namespaces (after killing what runs in them), links and tagged rules; every step
    is tried. Returns what could not be removed."""
    problems = []
    for namespace in namespaces:
        _kill_inside(namespace)
        result = _cmd("ip", "netns", "del", namespace, check=False)
        if result.returncode != 0 and namespace in _namespaces():
            problems.append(f"namespace {namespace}: {result.stderr.strip()}")
    present = set(_links())
    for link in links:
        if link in present:
            result = _cmd("ip", "link", "del", link, check=False)
            if result.returncode != 0 and link in _links():
                problems.append(f"link {link}: {result.stderr.strip()}")
    for chain, rule, _ in _tagged_rules(owner):
        result = _cmd("iptables", "-D", chain, *rule[2:], check=False)
        if result.returncode != 0:
            problems.append(f"iptables rule {' '.join(rule)}: {result.stderr.strip()}")
    return problems


def leftovers(owner: int | None = None) -> dict[str, list[str]]:
    """Namespaces, links and iptables rules of topologies (of ``owner`` only, when given)."""

    def ours(match: re.Match[str] | None, base: int) -> bool:
        return match is not None and (owner is None or int(match[1], base) == owner)

    return {
        "namespaces": [n for n in _namespaces() if ours(_NETNS.match(n), 10)],
        "links": [
            name
            for name in _links()
            if ours(_BRIDGE.match(name), 16) or ours(_VETH.match(name), 16)
        ],
        "iptables": [" ".join(rule) for _, rule, _ in _tagged_rules(owner)],
    }


def clean_leftovers() -> list[str]:
    """Remove what topologies of processes no longer alive left behind (their teardown never
    ran). Returns what was removed, for the test's log."""
    # owner -> (namespaces, links)
    found: dict[int, tuple[list[str], list[str]]] = {}
    for name in _namespaces():
        if match := _NETNS.match(name):
            found.setdefault(int(match[1]), ([], []))[0].append(name)
    for name in _links():
        if match := _BRIDGE.match(name) or _VETH.match(name):
            found.setdefault(int(match[1], 16), ([], []))[1].append(name)
    for _, _, owner in _tagged_rules():
        found.setdefault(owner, ([], []))
    removed: list[str] = []
    problems: list[str] = []
    for owner, (namespaces, links) in sorted(found.items()):
        if _alive(owner):
            continue
        problems += _remove(namespaces, links, owner)
        removed += [*namespaces, *links, f"iptables rules tagged {PREFIX}-{owner}"]
    if problems:
        raise RuntimeError("could not remove leftovers: " + "; ".join(problems))
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    used = set()
    for line in _cmd("ip", "-o", "-4", "addr", "show").stdout.splitlines():
        address = ipaddress.ip_interface(line.split()[3])
        used.add(address.network)
    for subnet in SUPERNET.subnets(new_prefix=24):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError(f"every /24 of {SUPERNET} is in use by an interface")


class Topology:
    """A bridge and one namespace per part (see the module docstring). ``up()`` builds it,
    ``down()`` removes it; as a context manager, both."""

    def __init__(self, parts: Sequence[str], *, owner: int | None = None) -> None:
        if len(set(parts)) != len(parts) or not parts:
            raise ValueError(f"parts must be distinct and at least one: {parts!r}")
        self.owner = os.getpid() if owner is None else owner
        self.parts = list(parts)
        self.bridge = f"{PREFIX}{self.owner:x}"
        self.tag = f"{PREFIX}-{self.owner}"
        self.subnet: ipaddress.IPv4Network | None = None
        self._built = False

    # ------------------------------------------------------------------ names and addresses

    def namespace(self, part: str) -> str:
        return f"{PREFIX}-{self.owner}-{part}"

    def _veth(self, index: int, side: str = "v") -> str:
        return f"nb{side}{self.owner:x}-{index}"

    def _host(self, index: int) -> str:
        assert self.subnet is not None, "the topology is not up"
        return str(self.subnet.network_address + index)

    @property
    def host_address(self) -> str:
        """The root namespace's address on the bridge (the first of the subnet)."""
        return self._host(1)

    def address(self, part: str) -> str:
        return self._host(self.parts.index(part) + 2)

    # ------------------------------------------------------------------ building

    def up(self) -> Topology:
        """Build the bridge, the namespaces and the iptables rule; on a failure, remove what
        was built and raise."""
        self.subnet = _free_subnet()
        self._built = True
        try:
            _cmd("ip", "link", "add", self.bridge, "type", "bridge")
            _cmd("ip", "addr", "add", f"{self.host_address}/24", "dev", self.bridge)
            _cmd("ip", "link", "set", self.bridge, "up")
            for index, part in enumerate(self.parts):
                namespace, veth, peer = (
                    self.namespace(part),
                    self._veth(index),
                    self._veth(index, "p"),
                )
                _cmd("ip", "netns", "add", namespace)
                # The peer is made in the root namespace under a name of ours, then moved and
                # renamed (the root namespace has an eth0 of its own).
                _cmd("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
                _cmd("ip", "link", "set", peer, "netns", namespace)
                _cmd("ip", "link", "set", veth, "master", self.bridge, "up")
                inside = ("ip", "netns", "exec", namespace, "ip")
                _cmd(*inside, "link", "set", peer, "name", "eth0")
                _cmd(*inside, "addr", "add", f"{self.address(part)}/24", "dev", "eth0")
                _cmd(*inside, "link", "set", "eth0", "up")
                _cmd(*inside, "link", "set", "lo", "up")
            chains = _forward_chains()
            if not chains:
                raise RuntimeError("iptables has no FORWARD chain (is this the host's iptables?)")
            accept = f"-i {self.bridge} -o {self.bridge} -m comment --comment {self.tag} -j ACCEPT"
            _cmd("iptables", "-I", chains[0], "1", *accept.split())
        except BaseException:
            with contextlib.suppress(RuntimeError):
                self.down()
            raise
        return self

    def down(self) -> None:
        """Remove this topology's namespaces (killing what still runs there), bridge, veths
        and iptables rules; every step is tried. Idempotent. Raises ``RuntimeError`` naming
        what could not be removed."""
        if not self._built:
            return
        namespaces = [n for n in map(self.namespace, self.parts) if n in _namespaces()]
        links = [self.bridge]
        links += [self._veth(i, side) for i in range(len(self.parts)) for side in "vp"]
        problems = _remove(namespaces, links, self.owner)
        if problems:
            raise RuntimeError("network namespace teardown left: " + "; ".join(problems))
        self._built = False

    def __enter__(self) -> Topology:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ------------------------------------------------------------------ processes

    def argv(self, part: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``part``'s namespace (``ip netns exec`` execs it, so the pid
        of the process started is the command's own)."""
        return ["ip", "netns", "exec", self.namespace(part), *argv]

    def popen(self, part: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.argv(part, argv), **kwargs)

    def run(
        self, part: str, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(self.argv(part, argv), **kwargs)
