"""Real dockerd and a real SeaweedFS S3 server. Missing either is a failure, never a skip."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import ensure_tiny_image
from tests.support.postgres import postgres_databases  # noqa: F401 (a fixture, shared)
from tests.support.s3server import S3Server

TEST_IMAGE = "nbfleet/tiny:test"


@pytest.fixture(scope="session")
def tiny_image() -> str:
    try:
        return ensure_tiny_image(TEST_IMAGE)
    except RuntimeError as exc:
        pytest.fail(f"integration tests need dockerd and the tiny image: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3"))
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(f"integration tests need a SeaweedFS S3 server: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def host_id() -> str:
    """A host id of its own per test, so list_managed never sees another test's containers."""
    return f"it-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def notebook_ids(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Notebook ids a test used; their containers and networks are removed afterwards, logs
    dumped on failure. A network left behind takes one of dockerd's ~30 address pools for
    good: enough of them and no notebook gets a network of its own."""
    ids: list[str] = []
    yield ids
    for notebook in ids:
        name = f"nbfleet-{notebook}"
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            logs = subprocess.run(["docker", "logs", "--tail", "50", name], capture_output=True)
            print(f"----- {name} logs -----\n{logs.stdout.decode()}{logs.stderr.decode()}")
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        subprocess.run(["docker", "network", "rm", name], capture_output=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def new_notebook_id(ids: list[str]) -> str:
    notebook = f"it{uuid.uuid4().hex[:10]}"
    ids.append(notebook)
    return notebook


def workdirs(tmp_path: Path, notebook: str) -> tuple[str, str]:
    return str(tmp_path / "ws" / notebook), str(tmp_path / "scratch" / notebook)
