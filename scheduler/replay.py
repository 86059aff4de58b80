"""Replay protection for signed agent requests across replicas.

:class:`common.auth.Verifier` refuses a nonce it has seen, but it remembers only what reached
this process. With several replicas behind one address, a request captured on the wire and
replayed to another replica would pass there; so on PostgreSQL every accepted request's nonce is
also claimed in the database (table ``request_nonces``, :meth:`scheduler.db.Database.
claim_nonces`), whose primary key decides, across every replica at once, which request used it
first. A replay that loses is refused as :class:`common.auth.Verifier` refuses one: 401,
"replayed request".

Claims are gathered into one statement for all the requests that arrive while the previous
statement runs (a group commit): a fleet's heartbeats cost a few round trips per second, not
one each. The nonces expire when their timestamp could no longer pass the skew check anyway,
and the maintenance holder deletes them (:func:`forget_expired`).

On SQLite there is one scheduler process, whose Verifier already remembers every nonce: nothing
more is claimed.
"""

from __future__ import annotations

import asyncio
import logging

from common.auth import MAX_SKEW_S
from common.errors import ApiError
from scheduler.db import Database, Tx

log = logging.getLogger(__name__)


class ReplayGuard:
    def __init__(self, db: Database, *, max_skew_s: float = MAX_SKEW_S) -> None:
        self.db = db
        self.max_skew_s = max_skew_s
        self._waiting: list[tuple[str, float, asyncio.Future[bool]]] = []
        self._claiming: asyncio.Task[None] | None = None

    async def first_use(self, host_id: str, nonce: str, sent_at: float) -> None:
        """Raise ``unauthenticated`` if any replica accepted ``nonce`` from ``host_id`` before
        (the request was verified, its timestamp within the skew)."""
        if not self.db.shared:
            return
        # Clocks of replicas differ a little: keep the nonce twice the window, as the
        # Verifier does.
        expires_at = sent_at + 2 * self.max_skew_s
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((f"{host_id}:{nonce}", expires_at, done))
        if self._claiming is None or self._claiming.done():
            self._claiming = asyncio.create_task(self._claim(), name="nonce-claims")
        if not await done:
            log.warning(
                "host=%s replayed request refused (nonce used through another replica)", host_id
            )
            raise ApiError("unauthenticated", "replayed request: nonce already used")

    async def _claim(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                fresh = await self.db.claim_nonces([(key, exp) for key, exp, _ in batch])
            except Exception as exc:  # the requests fail (500); their agents try again
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for key, _, done in batch:
                if not done.done():
                    done.set_result(key in fresh)


async def forget_expired(tx: Tx, now: float) -> int:
    """Delete nonces whose requests could no longer pass the skew check."""
    return await tx.run("DELETE FROM request_nonces WHERE expires_at < ?", (now,))
