"""Announcements between scheduler replicas on PostgreSQL: ``NOTIFY`` sent with a write
transaction's COMMIT (:func:`notices_sql`), and the one ``LISTEN`` connection of each replica
(:func:`listen`). :mod:`scheduler.db_postgres` uses both for :meth:`scheduler.db.Tx.notify`
and :meth:`scheduler.db.Database.listen`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

log = logging.getLogger(__name__)


def notices_sql(notices: list[tuple[str, str]]) -> str:
    """One ``SELECT pg_notify(...)`` for all ``notices``, as literals (sent with COMMIT in one
    simple query, which takes no parameters). Channels are the code's own names; payloads are
    host ids and replica ids, but are quoted as any text would be (with
    standard_conforming_strings on, doubling ``'`` is the whole of it), and a NUL, which no
    payload can carry, is refused."""
    if not notices:
        return ""
    values = []
    for channel, payload in notices:
        if "\x00" in payload or "\x00" in channel:
            raise ValueError(f"a NUL in a notification on {channel!r}")
        quoted = [text.replace("'", "''") for text in (channel, payload)]
        values.append(f"('{quoted[0]}', '{quoted[1]}')")
    return f"SELECT pg_notify(v.c, v.p) FROM (VALUES {', '.join(values)}) AS v (c, p);"


async def listen(url: str, where: str, handlers: dict[str, Callable[[str], None]]) -> None:
    """Call ``handlers[channel](payload)`` for what is announced on the database at ``url``
    (``where``: how logs name it), until cancelled. One connection of its own (a pooled one
    would stop listening when returned), connected again after any break; what was announced
    meanwhile is lost, so handlers are told to assume anything changed (``""``)."""
    delay = 1.0
    first = True
    while True:
        broke = asyncio.Event()
        try:
            conn = await asyncpg.connect(
                url, server_settings={"application_name": "nbfleet-scheduler-listen"}
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning(
                "database=%s cannot listen for other replicas' changes (%s); retrying in "
                "%.0fs: until then this replica learns of them within a loop tick",
                where,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)
            continue
        try:
            conn.add_termination_listener(lambda _conn, broke=broke: broke.set())
            for channel, handler in handlers.items():
                await conn.add_listener(channel, _deliver(handler))
            if not first:
                log.info("database=%s listening again for other replicas", where)
                for handler in handlers.values():
                    handler("")
            first, delay = False, 1.0
            await broke.wait()
            log.warning("database=%s listening connection lost; reconnecting", where)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("database=%s listening failed (%s); reconnecting", where, exc)
            await asyncio.sleep(delay)
        finally:
            if not conn.is_closed():
                conn.terminate()


def _deliver(handler: Callable[[str], None]) -> Callable[..., None]:
    def deliver(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            handler(payload)
        except Exception:
            log.exception("handling a notification failed: %r", payload)

    return deliver
