"""FakeObjectStore: an in-memory ObjectStore with an outage switch.

``down_for(n)`` makes the next ``n`` calls raise ``StoreError`` (S3 unreachable), after which it
answers again. ``objects[(bucket, key)] = (body, metadata)``. ``calls`` counts calls by name.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from agent.objectstore import ObjectInfo, StoreError


class FakeObjectStore:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {}
        self.buckets: set[str] = set()
        self.calls: Counter[str] = Counter()
        self._down = 0

    def down_for(self, calls: int) -> None:
        self._down = calls

    def _enter(self, name: str) -> None:
        self.calls[name] += 1
        if self._down > 0:
            self._down -= 1
            raise StoreError(f"{name}: connection refused (fake outage)")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(k for b, k in self.objects if b == bucket and k.startswith(prefix))

    async def ensure_bucket(self, bucket: str) -> None:
        self._enter("ensure_bucket")
        self.buckets.add(bucket)

    async def put_file(
        self, bucket: str, key: str, path: str | None, metadata: dict[str, str]
    ) -> None:
        self._enter("put_file")
        body = b""
        if path is not None:
            with open(path, "rb") as source:
                body = source.read()
        self.objects[(bucket, key)] = (body, dict(metadata))

    async def get_file(self, bucket: str, key: str, dest: str) -> dict[str, str]:
        self._enter("get_file")
        if (bucket, key) not in self.objects:
            raise StoreError(f"no such key {key}")
        body, metadata = self.objects[(bucket, key)]
        with open(dest, "wb") as out:
            out.write(body)
        return dict(metadata)

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
                )
            )
        return found

    async def delete(self, bucket: str, keys: list[str]) -> None:
        self._enter("delete")
        for key in keys:
            self.objects.pop((bucket, key), None)

    async def close(self) -> None:
        pass
