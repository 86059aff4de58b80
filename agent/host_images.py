"""The host's catalog images, as the agent registers them (design.md, "Catalog").

:class:`HostImages` lists the local images carrying ``org.nbfleet.framework`` through the
runtime, with what their labels say they hold. A Docker that does not answer keeps the last
list read (the images did not go away because dockerd was slow), none before a first answer.
It also remembers the list the scheduler last took in a registration, so the agent registers
again only when what it would send changed.
"""

from __future__ import annotations

import logging

from agent.runtime import ContainerRuntime
from common import wire

log = logging.getLogger(__name__)


class HostImages:
    def __init__(self, runtime: ContainerRuntime, host_id: str) -> None:
        self.runtime = runtime
        self.host_id = host_id
        #: As last listed (``None``: never) and as the scheduler last took them.
        self.listed: list[wire.HostImage] | None = None
        self.registered: list[wire.HostImage] | None = None

    async def current(self) -> list[wire.HostImage]:
        """The images now; the last list read when Docker does not answer."""
        try:
            self.listed = await self.runtime.framework_images()
        except Exception as exc:
            log.warning(
                "host=%s images not listed (%s); registering the last list read",
                self.host_id,
                exc,
            )
        return list(self.listed or [])

    async def changed(self) -> bool:
        """Whether the images differ from those the scheduler last took."""
        return await self.current() != self.registered
