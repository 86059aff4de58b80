"""Chromium in a network namespace of its own, reaching the host's loopback through a SOCKS5
proxy.

Why: Chromium watches the network interfaces it can see (netlink) and fails every request in
flight with ``ERR_NETWORK_CHANGED`` when an address comes or goes. On a Docker host that is
every container start and stop (a veth pair, an IPv6 link-local address), so a browser on the
host's own network breaks a page load whenever any container on the machine changes. In a
namespace of its own Chromium sees only its own quiet interfaces, as a browser on a user's
laptop would.

``IsolatedNetwork`` creates the namespace (``ip netns``; needs root, as dockerd does), a
loopback and a veth pair in it (so Chromium counts itself online), and a SOCKS5 proxy
whose listening socket lives inside the namespace while its outgoing connections are made in
the host's: Chromium is pointed at it for every URL, loopback included. Only loopback
destinations are relayed; anything else (an editor phoning home) is refused and remembered in
``refused``.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import logging
import os
import socket
import subprocess
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def prune_stale(prefix: str) -> None:
    """Delete namespaces ``<prefix><pid>`` whose process is gone (a run that was killed)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = name.removeprefix(prefix)
        if name.startswith(prefix) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


class IsolatedNetwork:
    def __init__(self, name: str) -> None:
        self.name = name
        self.proxy_port = 0
        self.refused: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
        try:
            _ip("netns", "add", self.name)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{exc}: browser tests run Chromium in a network namespace of its own "
                "(Docker's interface churn breaks its page loads otherwise); that needs root "
                "and iproute2, as scripts/test has"
            ) from None
        # No IPv6 in here: the link-local addresses the kernel would add a moment after the
        # links come up (once duplicate address detection is done) are themselves a network
        # change, which fails Chromium's first page load if it starts within that moment.
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.name,
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
            check=True,
            capture_output=True,
        )
        _ip("-n", self.name, "link", "set", "lo", "up")
        # A veth pair with both ends inside (kernels without the dummy driver have veth).
        _ip("-n", self.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        _ip("-n", self.name, "addr", "add", "192.0.2.1/24", "dev", "eth0")
        _ip("-n", self.name, "link", "set", "eth0", "up")
        _ip("-n", self.name, "link", "set", "eth1", "up")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name=f"socks-{self.name}", daemon=True
        )
        self._thread.start()
        ready.wait(30)
        if failure or not self.proxy_port:
            self.stop()
            raise RuntimeError(f"the SOCKS proxy for netns {self.name} did not start: {failure}")

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)

    def chromium_wrapper(self, chromium: str, directory: Path) -> str:
        """An executable that runs ``chromium`` inside the namespace, for Playwright's
        ``executable_path`` (Playwright talks to it over pipes, not the network)."""
        wrapper = directory / f"chromium-in-{self.name}"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {self.name} {chromium} "$@"\n')
        wrapper.chmod(0o755)
        return str(wrapper)

    def chromium_args(self) -> list[str]:
        # <-loopback>: Chromium never proxies loopback by default; here loopback is the point.
        return [
            f"--proxy-server=socks5://127.0.0.1:{self.proxy_port}",
            "--proxy-bypass-list=<-loopback>",
        ]

    # ------------------------------------------------------------------ the proxy

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            # setns changes only this thread's namespace: listen inside, then come back so
            # the connections the proxy makes are the host's.
            with (
                open("/proc/thread-self/ns/net", "rb") as host,
                open(f"/run/netns/{self.name}", "rb") as isolated,
            ):
                _setns(isolated.fileno())
                try:
                    listener = socket.create_server(("127.0.0.1", 0))
                finally:
                    _setns(host.fileno())
            self.proxy_port = listener.getsockname()[1]
            self._loop = asyncio.new_event_loop()
            server = self._loop.run_until_complete(asyncio.start_server(self._serve, sock=listener))
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await self._handshake(reader, writer)
            if upstream is None:
                return
            up_reader, up_writer = upstream
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _handshake(self, reader, writer):
        """RFC 1928, no authentication, CONNECT only."""
        version, n_methods = await reader.readexactly(2)
        await reader.readexactly(n_methods)
        if version != 5:
            return None
        writer.write(b"\x05\x00")
        _, command, _, address_type = await reader.readexactly(4)
        if address_type == 1:
            host = socket.inet_ntop(socket.AF_INET, await reader.readexactly(4))
        elif address_type == 4:
            host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
        elif address_type == 3:
            length = (await reader.readexactly(1))[0]
            host = (await reader.readexactly(length)).decode()
        else:
            return None
        port = int.from_bytes(await reader.readexactly(2), "big")
        failure = b"\x05\x07" if command != 1 else None  # command not supported
        if failure is None and not _is_loopback(host):
            self.refused.append(f"{host}:{port}")
            failure = b"\x05\x02"  # not allowed by ruleset
        if failure is None:
            try:
                upstream = await asyncio.open_connection(host, port)
            except OSError:
                failure = b"\x05\x05"  # connection refused
        if failure is not None:
            writer.write(failure + b"\x00\x01" + bytes(6))
            await writer.drain()
            return None
        writer.write(b"\x05\x00\x00\x01" + bytes(6))
        await writer.drain()
        return upstream


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then half-close; on an error close, which ends the other
    direction too."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()
