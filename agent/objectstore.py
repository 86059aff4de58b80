"""Object storage for workspaces (S3 API through aiobotocore).

Contract of :class:`ObjectStore`:

* ``put_file(bucket, key, body, metadata)`` uploads an open binary file from its start
  (``body=None`` uploads an empty object); user metadata keys are lower-case ASCII, values
  ASCII. Callers open the file themselves (:mod:`agent.userfs`: never through a link).
* ``get_file(bucket, key, out)`` downloads into the open binary file ``out`` and returns the
  object's user metadata.
* ``list(bucket, prefix, metadata=False)`` returns every object under ``prefix`` with size and
  etag; with ``metadata=True`` also each object's user metadata (one HEAD per object).
* ``delete(bucket, keys)`` deletes in batches of at most 1000; missing keys are not an error.
* ``ensure_bucket(bucket)`` creates the bucket unless it exists.
* ``put_bytes(bucket, key, data, metadata=None, if_none_match=False)`` uploads ``data`` (a
  multipart upload with parts in parallel above :data:`MULTIPART_THRESHOLD`). With
  ``if_none_match`` the put is conditional (``If-None-Match: *``) and raises
  :class:`AlreadyExists` when the key exists, so a committed object is never overwritten.
* ``get_bytes(bucket, key, start=None, end=None)`` returns the object, or the byte range
  ``[start, end)`` of it (one ranged GET); a missing key raises :class:`NotFound`.
* ``ObjectInfo.modified`` is the object's last-modified time (epoch seconds) as listed.
* ``put_object(bucket, key, data)`` uploads ``data`` in one PUT and returns the new object's
  ETag as a listing shows it (datasync records it, so a later ``rwd`` delete can tell the
  object it uploaded from one written since).
* ``put_parts(bucket, key, size, part_size, read_part, commit)`` is a multipart upload of
  ``size`` bytes that ``read_part(offset, length)`` supplies, made visible only if ``commit()``,
  asked once every part is stored, says so; otherwise (or when a part comes back short, or on
  any failure) it is aborted and nothing is visible under ``key``. Returns the ETag, or
  ``None`` when ``commit()`` or a short part refused.
* Any failure to reach the store raises :class:`StoreError`, whose message says what failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

log = logging.getLogger(__name__)

DELETE_BATCH = 1000
CHUNK = 1024 * 1024
#: Objects above this are uploaded in parts of :data:`PART_SIZE`, several at once, so one big
#: object is not limited to one connection's throughput.
MULTIPART_THRESHOLD = 16 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
PART_CONCURRENCY = 4


class StoreError(Exception):
    pass


class AlreadyExists(StoreError):
    """A conditional put found the key already there."""


class NotFound(StoreError):
    pass


@dataclass
class ObjectInfo:
    key: str
    size: int
    etag: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    modified: float = 0.0


class ObjectStore(Protocol):
    async def ensure_bucket(self, bucket: str) -> None: ...

    async def put_file(
        self, bucket: str, key: str, body: BinaryIO | None, metadata: dict[str, str]
    ) -> None: ...

    async def get_file(self, bucket: str, key: str, out: BinaryIO) -> dict[str, str]: ...

    async def list(self, bucket: str, prefix: str, metadata: bool = False) -> list[ObjectInfo]: ...

    async def delete(self, bucket: str, keys: list[str]) -> None: ...

    async def put_bytes(
        self,
        bucket: str,
        key: str,
        data: bytes,
        metadata: dict[str, str] | None = None,
        if_none_match: bool = False,
    ) -> None: ...

    async def get_bytes(
        self, bucket: str, key: str, start: int | None = None, end: int | None = None
    ) -> bytes: ...

    async def close(self) -> None: ...


class S3ObjectStore:
    """:class:`ObjectStore` over the S3 API with path-style addressing (MinIO, SeaweedFS, AWS).

    Empty ``endpoint`` / keys fall back to botocore's usual sources (``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, profiles, instance roles).
    """

    def __init__(
        self,
        endpoint: str = "",
        region: str = "us-east-1",
        access_key: str = "",
        secret_key: str = "",
        *,
        head_concurrency: int = 16,
    ) -> None:
        self._endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
        self._region = region or None
        self._access_key = access_key or None
        self._secret_key = secret_key or None
        self._head_limit = asyncio.Semaphore(max(1, head_concurrency))
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def _s3(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    from aiobotocore.config import AioConfig
                    from aiobotocore.session import get_session

                    # Payload signing and request checksums hash every body in the event
                    # loop; the snapshot engine verifies BLAKE3 content ids on restore, so
                    # they would only cost throughput.
                    config = AioConfig(
                        s3={"addressing_style": "path", "payload_signing_enabled": False},
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                        retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=10,
                        read_timeout=120,
                        max_pool_connections=64,
                    )
                    self._client = await self._stack.enter_async_context(
                        get_session().create_client(
                            "s3",
                            endpoint_url=self._endpoint,
                            region_name=self._region,
                            aws_access_key_id=self._access_key,
                            aws_secret_access_key=self._secret_key,
                            config=config,
                        )
                    )
        return self._client

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def ensure_bucket(self, bucket: str) -> None:
        s3 = await self._s3()
        try:
            await s3.head_bucket(Bucket=bucket)
            return
        except Exception as exc:
            if _status(exc) not in (404, 403, 400):
                raise StoreError(f"cannot reach bucket {bucket}: {exc}") from exc
        try:
            await s3.create_bucket(Bucket=bucket)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StoreError(f"cannot create bucket {bucket}: {exc}") from exc

    async def put_file(
        self, bucket: str, key: str, body: BinaryIO | None, metadata: dict[str, str]
    ) -> None:
        s3 = await self._s3()
        try:
            if body is None:
                await s3.put_object(Bucket=bucket, Key=key, Body=b"", Metadata=metadata)
                return
            # Streamed from the open file; multipart upload for huge files is future work.
            body.seek(0)
            await s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)
        except OSError:
            raise
        except Exception as exc:
            raise StoreError(f"upload of s3://{bucket}/{key} failed: {exc}") from exc

    async def get_file(self, bucket: str, key: str, out: BinaryIO) -> dict[str, str]:
        s3 = await self._s3()
        try:
            response = await s3.get_object(Bucket=bucket, Key=key)
            async with response["Body"] as stream:
                while chunk := await stream.read(CHUNK):
                    out.write(chunk)
            return dict(response.get("Metadata") or {})
        except OSError:
            raise
        except Exception as exc:
            raise StoreError(f"download of s3://{bucket}/{key} failed: {exc}") from exc

    async def list(self, bucket: str, prefix: str, metadata: bool = False) -> list[ObjectInfo]:
        s3 = await self._s3()
        found: list[ObjectInfo] = []
        try:
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []) or []:
                    found.append(
                        ObjectInfo(
                            key=item["Key"],
                            size=int(item.get("Size", 0)),
                            etag=str(item.get("ETag", "")).strip('"'),
                            modified=_epoch(item.get("LastModified")),
                        )
                    )
        except Exception as exc:
            if _status(exc) == 404:  # no bucket yet: nothing stored
                return []
            raise StoreError(f"listing s3://{bucket}/{prefix} failed: {exc}") from exc
        if metadata:
            await asyncio.gather(*(self._fill_metadata(s3, bucket, info) for info in found))
        return found

    async def _fill_metadata(self, s3: Any, bucket: str, info: ObjectInfo) -> None:
        async with self._head_limit:
            try:
                head = await s3.head_object(Bucket=bucket, Key=info.key)
            except Exception as exc:
                if _status(exc) == 404:  # deleted meanwhile: treat as metadata-less
                    return
                raise StoreError(f"reading metadata of s3://{bucket}/{info.key} failed: {exc}")
            info.metadata = dict(head.get("Metadata") or {})

    async def delete(self, bucket: str, keys: list[str]) -> None:
        s3 = await self._s3()
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            try:
                reply = await s3.delete_objects(
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            except Exception as exc:
                raise StoreError(f"deleting {len(batch)} objects in {bucket} failed: {exc}")
            errors = [e for e in reply.get("Errors", []) or [] if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise StoreError(
                    f"deleting {len(errors)} objects in {bucket} failed, first "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )

    async def put_bytes(
        self,
        bucket: str,
        key: str,
        data: bytes,
        metadata: dict[str, str] | None = None,
        if_none_match: bool = False,
    ) -> None:
        s3 = await self._s3()
        if len(data) > MULTIPART_THRESHOLD and not if_none_match:
            await self._put_multipart(s3, bucket, key, data, metadata or {})
            return
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_none_match else {}
        try:
            await s3.put_object(Bucket=bucket, Key=key, Body=data, Metadata=metadata or {}, **extra)
        except Exception as exc:
            if if_none_match and _status(exc) in (409, 412):
                raise AlreadyExists(f"s3://{bucket}/{key} already exists") from exc
            raise StoreError(f"upload of s3://{bucket}/{key} failed: {exc}") from exc

    async def _put_multipart(
        self, s3: Any, bucket: str, key: str, data: bytes, metadata: dict[str, str]
    ) -> None:
        view = memoryview(data)
        try:
            created = await s3.create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata)
        except Exception as exc:
            raise StoreError(f"multipart upload of s3://{bucket}/{key} failed: {exc}") from exc
        upload_id = created["UploadId"]
        limit = asyncio.Semaphore(PART_CONCURRENCY)

        async def part(number: int, start: int) -> dict[str, Any]:
            async with limit:
                reply = await s3.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=bytes(view[start : start + PART_SIZE]),
                )
            return {"PartNumber": number, "ETag": reply["ETag"]}

        try:
            parts = await asyncio.gather(
                *(part(i + 1, start) for i, start in enumerate(range(0, len(data), PART_SIZE)))
            )
            await s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            if isinstance(exc, Exception):
                raise StoreError(f"multipart upload of s3://{bucket}/{key} failed: {exc}") from exc
            raise

    async def put_object(self, bucket: str, key: str, data: bytes) -> str:
        s3 = await self._s3()
        try:
            reply = await s3.put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as exc:
            raise StoreError(f"upload of s3://{bucket}/{key} failed: {exc}") from exc
        return str(reply.get("ETag", "")).strip('"')

    async def put_parts(
        self,
        bucket: str,
        key: str,
        size: int,
        part_size: int,
        read_part: Callable[[int, int], Awaitable[bytes]],
        commit: Callable[[], Awaitable[bool]],
    ) -> str | None:
        s3 = await self._s3()
        try:
            created = await s3.create_multipart_upload(Bucket=bucket, Key=key)
        except Exception as exc:
            raise StoreError(f"multipart upload of s3://{bucket}/{key} failed: {exc}") from exc
        upload_id = created["UploadId"]
        limit = asyncio.Semaphore(PART_CONCURRENCY)

        class _Short(Exception):
            pass

        async def part(number: int, start: int) -> dict[str, Any]:
            length = min(part_size, size - start)
            async with limit:
                data = await read_part(start, length)
                if len(data) != length:
                    raise _Short()
                reply = await s3.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                )
            return {"PartNumber": number, "ETag": reply["ETag"]}

        committed = False
        tasks = [
            asyncio.ensure_future(part(i + 1, start))
            for i, start in enumerate(range(0, size, part_size))
        ]
        try:
            try:
                parts = await asyncio.gather(*tasks)
            except BaseException:
                # One part failed (or came back short): the others are of no use any more.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            if not await commit():
                return None
            reply = await s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            committed = True
            return str(reply.get("ETag", "")).strip('"')
        except _Short:
            return None
        except (StoreError, OSError):
            raise
        except Exception as exc:
            raise StoreError(f"multipart upload of s3://{bucket}/{key} failed: {exc}") from exc
        finally:
            if not committed:
                with contextlib.suppress(Exception):
                    await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)

    async def get_bytes(
        self, bucket: str, key: str, start: int | None = None, end: int | None = None
    ) -> bytes:
        s3 = await self._s3()
        extra: dict[str, Any] = {}
        if start is not None or end is not None:
            first = start or 0
            extra["Range"] = f"bytes={first}-{'' if end is None else end - 1}"
        try:
            response = await s3.get_object(Bucket=bucket, Key=key, **extra)
            async with response["Body"] as stream:
                return await stream.read()
        except Exception as exc:
            if _status(exc) == 404:
                raise NotFound(f"s3://{bucket}/{key} does not exist") from exc
            raise StoreError(f"download of s3://{bucket}/{key} failed: {exc}") from exc


def _epoch(value: Any) -> float:
    timestamp = getattr(value, "timestamp", None)
    return float(timestamp()) if timestamp is not None else 0.0


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
