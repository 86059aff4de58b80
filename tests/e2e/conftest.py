"""Fixtures for the end-to-end tier: one real cluster for the module's tests.

Every real part must be present; when one is missing the tests fail with a message saying what
and how to get it (``scripts/test`` installs and starts all of them). They never skip.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import botocore.session
import pytest

from tests.e2e.cluster import TINY_IMAGES, Cluster
from tests.support.nvml import build_fake_nvml
from tests.support.postgres import postgres_databases  # noqa: F401 (a fixture, shared)

HOST_A_GPUS = [("GPU-aaaaaaaa-0000-4000-8000-000000000001", "NVIDIA H100 80GB HBM3", 81559)]
HOST_B_GPUS = [
    ("GPU-bbbbbbbb-0000-4000-8000-000000000001", "NVIDIA A100-SXM4-40GB", 40960),
    ("GPU-bbbbbbbb-0000-4000-8000-000000000002", "NVIDIA A100-SXM4-40GB", 40960),
]


def _require_docker() -> None:
    info = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True
    )
    if info.returncode != 0:
        pytest.fail(
            "end-to-end tests need a running dockerd (scripts/test starts one): "
            + info.stderr.strip(),
            pytrace=False,
        )
    for tiny in TINY_IMAGES.values():
        image = subprocess.run(["docker", "image", "inspect", tiny], capture_output=True)
        if image.returncode != 0:
            pytest.fail(
                f"image {tiny} is missing: run scripts/build-images --only tiny", pytrace=False
            )


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    from tests.support.s3server import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server.endpoint
    server.stop()


class S3:
    def __init__(self, endpoint: str) -> None:
        self.client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="e2e",
            aws_secret_access_key="e2e-secret",
        )

    def list(self, bucket: str, prefix: str) -> list[str]:
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys


@pytest.fixture(scope="session")
def s3_client(s3_endpoint):
    return S3(s3_endpoint)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, s3_endpoint):
    _require_docker()
    root = Path(tmp_path_factory.mktemp("cluster"))
    nvml_dir = root / "nvml"
    build_fake_nvml(nvml_dir)
    c = Cluster(root=root, s3_endpoint=s3_endpoint, nvml_dir=nvml_dir)
    with c.running("e2e", {"host-a": HOST_A_GPUS, "host-b": HOST_B_GPUS}):
        yield c


@pytest.fixture
def notebooks(cluster, request):
    """Ids of notebooks a test created; deleted afterwards so tests do not share GPUs."""
    created: list[str] = []
    yield created
    for nb_id in created:
        nb = cluster.notebook(nb_id)
        if nb["state"] in ("DELETED", "DELETING"):
            continue
        if nb["state"] in ("STARTING", "RUNNING"):
            cluster.api("POST", f"/v1/notebooks/{nb_id}/stop")
        if nb["state"] != "STOPPED":
            for state in ("STOPPED", "FAILED", "ERROR"):
                if cluster.notebook(nb_id)["state"] == state:
                    break
            else:
                _settle(cluster, nb_id)
        cluster.api("DELETE", f"/v1/notebooks/{nb_id}")
        cluster.wait_state(nb_id, "DELETED")


def _settle(cluster, nb_id):
    from tests.e2e.cluster import wait_for

    wait_for(
        f"notebook {nb_id} to settle",
        lambda: cluster.notebook(nb_id)["state"] in ("STOPPED", "FAILED", "ERROR"),
        90,
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "cluster" in item.fixturenames:
        cluster = item.funcargs.get("cluster")
        if cluster is not None:
            report.sections.append(("nbfleet cluster logs", cluster.dump()))
