"""FakeObjectStore: an in-memory ObjectStore with outages.

``down_for(n)`` makes the next ``n`` calls raise ``StoreError`` (S3 unreachable), after which it
answers again. ``down_after(k)`` lets ``k`` more calls through, then fails every call until
``down_for(0)``: an outage in the middle of a push. ``objects[(bucket, key)] = (body,
metadata)``; ``modified[(bucket, key)]`` is the put time from ``clock`` (default
``time.time``). ``calls`` counts calls by name; ``put_keys`` lists every key put, in order;
``on_put(key)`` runs after each put.
Conditional puts (``if_none_match``) of an existing key raise ``AlreadyExists``.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from typing import BinaryIO

from agent.objectstore import AlreadyExists, NotFound, ObjectInfo, StoreError


class FakeObjectStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {}
        self.modified: dict[tuple[str, str], float] = {}
        self.buckets: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.put_keys: list[str] = []
        self.clock = clock
        self._down = 0
        self._fail_after: int | None = None
        #: Called with each key put, after it is stored: lets a test change the files a push is
        #: reading at a precise moment (a user writing during a checkpoint).
        self.on_put: Callable[[str], None] | None = None

    def down_for(self, calls: int) -> None:
        self._down = calls
        self._fail_after = None

    def down_after(self, calls: int) -> None:
        self._fail_after = calls

    def _enter(self, name: str) -> None:
        self.calls[name] += 1
        if self._fail_after is not None:
            if self._fail_after <= 0:
                raise StoreError(f"{name}: connection refused (fake outage)")
            self._fail_after -= 1
        if self._down > 0:
            self._down -= 1
            raise StoreError(f"{name}: connection refused (fake outage)")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(k for b, k in self.objects if b == bucket and k.startswith(prefix))

    def _store(self, bucket: str, key: str, body: bytes, metadata: dict[str, str]) -> None:
        self.objects[(bucket, key)] = (body, dict(metadata))
        self.modified[(bucket, key)] = self.clock()
        self.put_keys.append(key)
        if self.on_put is not None:
            self.on_put(key)

    async def ensure_bucket(self, bucket: str) -> None:
        self._enter("ensure_bucket")
        self.buckets.add(bucket)

    async def put_file(
        self, bucket: str, key: str, body: BinaryIO | None, metadata: dict[str, str]
    ) -> None:
        self._enter("put_file")
        data = b""
        if body is not None:
            body.seek(0)
            data = body.read()
        self._store(bucket, key, data, metadata)

    async def put_bytes(
        self,
        bucket: str,
        key: str,
        data: bytes,
        metadata: dict[str, str] | None = None,
        if_none_match: bool = False,
    ) -> None:
        self._enter("put_bytes")
        if if_none_match and (bucket, key) in self.objects:
            raise AlreadyExists(f"{key} already exists")
        self._store(bucket, key, bytes(data), metadata or {})

    async def get_file(self, bucket: str, key: str, out: BinaryIO) -> dict[str, str]:
        self._enter("get_file")
        if (bucket, key) not in self.objects:
            raise NotFound(f"no such key {key}")
        body, metadata = self.objects[(bucket, key)]
        out.write(body)
        return dict(metadata)

    async def get_bytes(
        self, bucket: str, key: str, start: int | None = None, end: int | None = None
    ) -> bytes:
        self._enter("get_bytes")
        if (bucket, key) not in self.objects:
            raise NotFound(f"no such key {key}")
        body = self.objects[(bucket, key)][0]
        return body[start or 0 : end]

    async def list(self, bucket: str, prefix: str, metadata: bool = False) -> list[ObjectInfo]:
        self._enter("list")
        found = []
        for key in self.keys(bucket, prefix):
            body, meta = self.objects[(bucket, key)]
            found.append(
                ObjectInfo(
                    key=key,
                    size=len(body),
                    etag=hashlib.md5(body).hexdigest(),
                    metadata=dict(meta) if metadata else {},
                    modified=self.modified[(bucket, key)],
                )
            )
        return found

    async def delete(self, bucket: str, keys: list[str]) -> None:
        self._enter("delete")
        for key in keys:
            self.objects.pop((bucket, key), None)
            self.modified.pop((bucket, key), None)

    async def close(self) -> None:
        pass
