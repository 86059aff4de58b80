"""Calls from the scheduler to an agent, signed with that agent's secret."""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable

import aiohttp

from common.auth import sign
from common.errors import ApiError

log = logging.getLogger(__name__)


class AgentClient:
    """One HTTP session for all agents; :meth:`start` and :meth:`close` bracket its life."""

    def __init__(
        self,
        secret_for: Callable[[str], bytes | None],
        *,
        clock: Callable[[], float],
        timeout_s: float = 15.0,
    ) -> None:
        self._secret_for = secret_for
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def logs(self, host_id: str, agent_url: str, notebook_id: str, tail: int | None) -> str:
        """The container log text, or ``ApiError('upstream_unavailable')``."""
        path = f"/v1/notebooks/{urllib.parse.quote(notebook_id, safe='')}/logs"
        if tail is not None:
            path += f"?tail={tail}"
        status, text = await self._get(host_id, agent_url, path)
        if status != 200:
            raise ApiError(
                "upstream_unavailable",
                f"agent on host {host_id} answered HTTP {status} for the logs: {text[:200]}",
                host=host_id,
                status=status,
            )
        return text

    async def _get(self, host_id: str, agent_url: str, path_qs: str) -> tuple[int, str]:
        secret = self._secret_for(host_id)
        if secret is None:
            raise ApiError(
                "upstream_unavailable", f"no secret for host {host_id}; cannot call its agent"
            )
        if self._session is None:
            raise RuntimeError("AgentClient is not started")
        headers = sign(secret, host_id, "GET", path_qs, b"", now=self._clock())
        url = agent_url.rstrip("/") + path_qs
        try:
            async with self._session.get(url, headers=headers) as resp:
                return resp.status, await resp.text()
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("host=%s agent at %s unreachable: %r", host_id, agent_url, exc)
            raise ApiError(
                "upstream_unavailable",
                f"cannot reach the agent of host {host_id} at {agent_url}: {exc!r}",
                host=host_id,
            )
