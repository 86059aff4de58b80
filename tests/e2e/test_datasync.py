"""Datasync on the real stack: a RUNNING notebook's rw volume pushed with
``nbfleet notebook datasync`` while a process in its container keeps writing into it, every
object that reaches the bucket a whole version of its file (never torn); an object added to the
bucket meanwhile pulled into the running container; and a stop afterwards that loses nothing."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from tests.e2e.cluster import container_exec, docker, wait_for

pytestmark = pytest.mark.e2e

A_SIZE = 200_000
B_SIZE = 262_144

#: Three ways programs write files, each version recognizable in full: ``a.txt`` replaced by
#: rename, ``b.bin`` rewritten in place (same size, one write), ``log.txt`` appended to.
WRITER = f"""
cd /workspace/data && mkdir -p live .tmp && n=0
while [ ! -e stop-writer ]; do
  n=$((n+1))
  yes "v$n" | head -c {A_SIZE} > .tmp/a.next && echo "end v$n" >> .tmp/a.next
  mv .tmp/a.next live/a.txt
  yes "w$n" | head -c {B_SIZE} > .tmp/b.next
  dd if=.tmp/b.next of=live/b.bin bs={B_SIZE} count=1 conv=notrunc 2>/dev/null
  echo "line $n" >> live/log.txt
  usleep 3000
done
echo $n > writer-done
"""


def repeated(word: str, size: int) -> bytes:
    line = f"{word}\n".encode()
    return (line * (size // len(line) + 1))[:size]


def whole_version(name: str, data: bytes) -> bool:
    """Whether ``data`` is exactly one version the writer wrote of ``name``."""
    if name == "log.txt":
        lines = data.decode().split("\n")
        return (
            lines[-1] == ""
            and len(lines) > 1
            and lines[:-1] == [f"line {i}" for i in range(1, len(lines))]
        )
    first = data.split(b"\n", 1)[0].decode(errors="replace")
    n = first[1:]
    if not n.isdigit():
        return False
    if name == "a.txt":
        return data == repeated(f"v{n}", A_SIZE) + f"end v{n}\n".encode()
    return data == repeated(f"w{n}", B_SIZE)


def test_datasync_of_a_volume_being_written_then_pull_then_stop(cluster, notebooks, s3_client):
    s3 = s3_client.client
    bucket = f"e2e-sync-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="in/hello.txt", Body=b"from the start\n")
    alias = f"lab-{uuid.uuid4().hex[:6]}"
    cluster.cli(
        "datastore", "add", alias, "--endpoint", cluster.s3_endpoint,
        "--access-key", "e2e", "--secret-key", "e2e-secret",
    )  # fmt: skip
    nb = cluster.cli_json(
        "notebook", "run", "tiny", "httpd", "--cpu", "1",
        "--volume", f"{bucket}@{alias}/in:/workspace/data:rw",
    )  # fmt: skip
    notebooks.append(nb["id"])
    cluster.wait_state(nb["id"], "RUNNING")
    name = f"nbfleet-{nb['id']}"

    def body(key: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    # A process in the container writes into the volume without pause.
    docker("exec", "-d", name, "sh", "-c", WRITER)
    wait_for(
        "the writer's first files",
        lambda: "log.txt" in container_exec(nb["id"], "ls /workspace/data/live"),
        30,
    )

    pushed = 0
    for _ in range(3):
        result = cluster.cli_json("notebook", "datasync", nb["id"])
        assert result["ok"], result
        [volume] = result["volumes"]
        assert volume["volume"] == f"{bucket}@{alias}/in:/workspace/data:rw"
        pushed += volume["files"]
        for key in ("in/live/a.txt", "in/live/b.bin", "in/live/log.txt"):
            listed = s3_client.list(bucket, key)
            if not listed:
                # Kept changing through every read: named, not uploaded.
                assert any(key[len("in/") :] in d for d in volume["details"]), volume
                continue
            data = body(key)
            assert whole_version(key.rsplit("/", 1)[1], data), (key, data[:40], data[-40:])
    assert pushed >= 3
    # The notebook runs on, its volume dir in place.
    assert cluster.notebook(nb["id"])["state"] == "RUNNING"

    # Pull: a new object appears in the container; a file the user keeps changing is not
    # replaced by the bucket's version of it.
    s3.put_object(Bucket=bucket, Key="in/from-s3.txt", Body=b"from the bucket\n")
    s3.put_object(Bucket=bucket, Key="in/live/a.txt", Body=b"theirs\n")
    pulled = cluster.cli("notebook", "datasync", nb["id"], "--direction", "pull")
    assert "live/a.txt: " in pulled.stdout and "kept yours" in pulled.stdout, pulled.stdout
    assert container_exec(nb["id"], "cat /workspace/data/from-s3.txt") == "from the bucket\n"
    assert container_exec(nb["id"], "stat -c %u /workspace/data/from-s3.txt").strip() == "1000"
    assert container_exec(nb["id"], "head -c 1 /workspace/data/live/a.txt") == "v"

    # The writer finishes; what the container holds now is what the bucket must hold after
    # the stop.
    container_exec(nb["id"], "touch /workspace/data/stop-writer")
    wait_for(
        "the writer to finish",
        lambda: "writer-done" in container_exec(nb["id"], "ls /workspace/data"),
        30,
    )
    files = ["live/a.txt", "live/b.bin", "live/log.txt", "from-s3.txt", "hello.txt"]
    sums = dict(
        reversed(line.split())
        for line in container_exec(
            nb["id"], "cd /workspace/data && sha256sum " + " ".join(files)
        ).splitlines()
    )
    cluster.cli("notebook", "stop", nb["id"])
    cluster.wait_state(nb["id"], "STOPPED")
    for path in files:
        assert hashlib.sha256(body(f"in/{path}")).hexdigest() == sums[path], path
