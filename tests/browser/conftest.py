"""Fixtures for the browser tier: headless Chromium (Debian's, driven by Playwright) against one
real cluster (scheduler and agent processes, dockerd, SeaweedFS, fake NVML) per package.

Every part must be present; a missing one fails the tests saying what and how to get it
(``scripts/test`` installs and builds all of it). They never skip.

A failing test leaves, for every page it had open, a screenshot, the URL with the console log,
and the HTML in ``.state/test-artifacts/browser/`` (``NBFLEET_TEST_ARTIFACTS`` moves it); the
failure report names the files and carries the cluster's logs. Measured timings are printed at
the end of the run and written to ``timings.json`` there.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.browser.netns import IsolatedNetwork, prune_stale
from tests.browser.stack import (
    CONDA_IMAGE,
    BrowserCluster,
    artifacts_dir,
    chromium_path,
    require_docker_images,
    require_playwright,
)
from tests.e2e.conftest import notebooks  # noqa: F401  (deletes what a test created)
from tests.support.nvml import build_fake_nvml
from tests.support.s3server import S3Server

PROJECT = "browser"
#: Enough fake GPUs for the tests' notebooks at once (the project quota is 4).
HOST_GPUS = [
    (f"GPU-cccccccc-0000-4000-8000-00000000000{i}", "NVIDIA H100 80GB HBM3", 81559)
    for i in range(1, 5)
]

_timings_key = pytest.StashKey[list]()


@pytest.fixture(scope="package", autouse=True)
def browser_stack_present():
    """Everything the tier needs, checked before anything starts, so a missing part fails at
    once saying how to get it."""
    require_playwright()
    chromium_path()
    require_docker_images(CONDA_IMAGE)


@pytest.fixture(scope="package")
def chromium(tmp_path_factory):
    """Headless Chromium in a network namespace of its own (see netns.py: Docker's interface
    churn on this host would otherwise abort its page loads), reaching loopback by SOCKS."""
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    prune_stale("nbf-browser-")
    network = IsolatedNetwork(f"nbf-browser-{os.getpid()}")
    try:
        network.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        with sync_playwright() as playwright:
            # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
            browser = playwright.chromium.launch(
                executable_path=network.chromium_wrapper(
                    executable, tmp_path_factory.mktemp("chromium")
                ),
                headless=True,
                args=["--no-sandbox", "--disable-dev-shm-usage", *network.chromium_args()],
            )
            yield browser
            browser.close()
    finally:
        network.stop()


@pytest.fixture
def web(chromium, request):
    """The test's pages: ``web.new_page()`` opens one in a fresh context (its own cookies)."""
    from tests.browser.session import BrowserSession

    session = BrowserSession(chromium, request.node.name, artifacts_dir())
    yield session
    session.close()


@pytest.fixture(scope="package")
def s3_endpoint(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server.endpoint
    server.stop()


@pytest.fixture(scope="package")
def cluster(tmp_path_factory, s3_endpoint):
    root = Path(tmp_path_factory.mktemp("browser-cluster"))
    nvml_dir = root / "nvml"
    build_fake_nvml(nvml_dir)
    c = BrowserCluster(root=root, s3_endpoint=s3_endpoint, nvml_dir=nvml_dir)
    with c.running(PROJECT, {"host-a": HOST_GPUS}):
        yield c


class Timings:
    """Figures a test measured, printed at the end of the run, never asserted."""

    def __init__(self, config: pytest.Config) -> None:
        self._all = config.stash.setdefault(_timings_key, [])

    def record(self, test: str, **figures: float | str) -> None:
        self._all.append({"test": test, "at": time.time(), **figures})
        (artifacts_dir() / "timings.json").write_text(json.dumps(self._all, indent=2) + "\n")


@pytest.fixture
def timings(request) -> Timings:
    return Timings(request.config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed or report.when == "teardown":
        return
    session = item.funcargs.get("web")
    if session is not None:
        saved = session.save_artifacts()
        listing = "\n".join(f"  {path}" for path in saved) or "  (no page was open)"
        report.sections.append(("browser artifacts", f"saved for this failure:\n{listing}"))
    cluster = item.funcargs.get("cluster")
    if cluster is not None:
        report.sections.append(("nbfleet cluster logs", cluster.dump()))


def pytest_terminal_summary(terminalreporter, config):
    figures = config.stash.get(_timings_key, [])
    if not figures:
        return
    terminalreporter.section("browser timings (measured, not asserted)")
    for entry in figures:
        shown = ", ".join(
            f"{k} {v:.1f}s" if isinstance(v, float) else f"{k} {v}"
            for k, v in entry.items()
            if k not in ("test", "at")
        )
        terminalreporter.write_line(f"{entry['test']}: {shown}")
    terminalreporter.write_line(f"(also in {artifacts_dir() / 'timings.json'})")
