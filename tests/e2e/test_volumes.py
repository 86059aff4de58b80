"""A data volume on the real stack: a datastore registered with the CLI, a bucket on the
cluster's S3 server, a notebook that reads and writes it, and the object there after stop."""

import subprocess
import uuid

import pytest

from tests.e2e.cluster import container_exec, wait_for

pytestmark = pytest.mark.e2e


def test_rw_volume_round_trip(cluster, notebooks, s3_client):
    bucket = f"e2e-data-{uuid.uuid4().hex[:8]}"
    s3_client.client.create_bucket(Bucket=bucket)
    s3_client.client.put_object(Bucket=bucket, Key="in/hello.txt", Body=b"from the bucket\n")
    s3_client.client.put_object(Bucket=bucket, Key="models/weights.bin", Body=b"w")
    alias = f"lab-{uuid.uuid4().hex[:6]}"
    cluster.cli(
        "datastore",
        "add",
        alias,
        "--endpoint",
        cluster.s3_endpoint,
        "--access-key",
        "e2e",
        "--secret-key",
        "e2e-secret",
    )
    listed = cluster.cli_json("datastore", "list")
    assert alias in [d["alias"] for d in listed]
    assert "e2e-secret" not in str(listed)

    nb = cluster.cli_json(
        "notebook",
        "run",
        "tiny",
        "httpd",
        "--cpu",
        "1",
        "--volume",
        f"{bucket}@{alias}/in:/workspace/data:rw",
        "--volume",
        f"{bucket}@{alias}/models:/mnt/models",
    )
    notebooks.append(nb["id"])
    assert [v["permission"] for v in nb["volumes"]] == ["rw", "ro"]
    cluster.wait_state(nb["id"], "RUNNING")

    assert container_exec(nb["id"], "cat /workspace/data/hello.txt") == "from the bucket\n"
    assert container_exec(nb["id"], "cat /mnt/models/weights.bin") == "w"
    container_exec(nb["id"], "echo 'trained' > /workspace/data/result.txt")
    read_only = subprocess.run(
        ["docker", "exec", f"nbfleet-{nb['id']}", "sh", "-c", "touch /mnt/models/x"],
        capture_output=True,
        text=True,
    )
    assert read_only.returncode != 0 and "Read-only file system" in read_only.stderr

    # In use: the alias cannot go.
    refused = cluster.cli("datastore", "delete", alias, check=False)
    assert refused.returncode == 1 and nb["id"] in refused.stderr

    cluster.cli("notebook", "stop", nb["id"])
    cluster.wait_state(nb["id"], "STOPPED")
    assert sorted(s3_client.list(bucket, "")) == [
        "in/hello.txt",
        "in/result.txt",
        "models/weights.bin",
    ]
    body = s3_client.client.get_object(Bucket=bucket, Key="in/result.txt")["Body"].read()
    assert body == b"trained\n"
    volumes_dir = cluster.agents[nb["host"] or cluster.host("host-a")].root / "volumes" / nb["id"]
    wait_for("volume host dirs removed after the push", lambda: not volumes_dir.exists(), 30)
