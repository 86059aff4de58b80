"""The real stack the browser tests drive, and the checks that it is all there.

``BrowserCluster`` is the end-to-end ``Cluster`` (scheduler and agents as processes, real
dockerd, SeaweedFS, fake NVML) whose scheduler offers the catalog users get: the frameworks and
editors of ``config/scheduler.example.toml``, so the browser sees the shipped editor commands.

The ``require_*`` functions fail the test (never skip) naming what is missing and how to get
it; ``scripts/test`` installs and builds all of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from tests.e2e.cluster import REPO, Cluster, scheduler_toml, wait_for

EXAMPLE_CONFIG = REPO / "config" / "scheduler.example.toml"
CONDA_IMAGE = "nbfleet/conda:py3.11"


def shipped_catalog_toml(defined: str) -> str:
    """The example config's ``[catalog.*]`` tables, as TOML, leaving out those ``defined``
    (another TOML text) already has: the e2e config keeps its test-only editors."""
    shipped = tomllib.loads(EXAMPLE_CONFIG.read_text())["catalog"]
    already = tomllib.loads(defined).get("catalog", {})
    lines: list[str] = []
    for kind in ("frameworks", "editors"):
        for name, table in shipped.get(kind, {}).items():
            if name in already.get(kind, {}):
                continue
            lines.append(f"\n[catalog.{kind}.{name}]")
            # Strings, lists of strings, numbers and booleans: their JSON is valid TOML.
            lines += [
                f"{key} = {json.dumps(value)}"
                for key, value in table.items()
                if not isinstance(value, dict)
            ]
            for version, spec in table.get("versions", {}).items():
                lines.append(f"[catalog.{kind}.{name}.versions.{json.dumps(version)}]")
                lines += [f"{key} = {json.dumps(value)}" for key, value in spec.items()]
    return "\n".join(lines) + "\n"


class BrowserCluster(Cluster):
    """A ``Cluster`` whose scheduler also offers the shipped frameworks and editors."""

    def start_scheduler(self) -> None:
        # Cluster.start_scheduler with a longer config; cluster.py has no hook for the catalog.
        self.root.mkdir(parents=True, exist_ok=True)
        base = scheduler_toml(self.root, self.port)
        self.scheduler_config.write_text(base + shipped_catalog_toml(base))
        log = open(self.scheduler_log, "ab")
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "scheduler.main", "run", "--config", str(self.scheduler_config)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for("scheduler /health", lambda: self._health(self.url), 30)
        self.admin_token = self._scheduler_cmd("admin-token").strip()


# ---------------------------------------------------------------------------- editor access


def is_proxied(nb: dict) -> bool:
    """True once the notebook's URL goes through nbfleet's access proxy (``/notebooks/<id>/``)
    rather than straight to the editor's published port."""
    return f"/notebooks/{nb['id']}" in (nb.get("url") or "")


def require_proxied(nb: dict) -> None:
    assert is_proxied(nb), (
        f"notebook {nb['id']} is RUNNING at {nb.get('url')!r}, not behind the access proxy "
        f"(/notebooks/{nb['id']}/)"
    )


def with_token(url: str, token: str) -> str:
    """``url`` with ``?token=`` set (the proxy turns it into a cookie and redirects)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("token", token)])))


def editor_url(nb: dict, token: str) -> str:
    """The URL a user with ``token`` opens. Before the proxy, ``url`` already carries the
    editor's own per-notebook token and ``token`` is not needed."""
    return with_token(nb["url"], token) if is_proxied(nb) else nb["url"]


# ---------------------------------------------------------------------------- requirements


def chromium_path() -> str:
    """Debian's chromium (``NBFLEET_CHROMIUM`` names another build); fails saying how to get
    one. Playwright drives it: no browser download is possible on these machines."""
    path = os.environ.get("NBFLEET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"browser tests need Chromium at {path}: apt-get install chromium "
            "(scripts/test installs it), or set NBFLEET_CHROMIUM to a Chromium binary",
            pytrace=False,
        )
    return path


def require_playwright() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.fail(
            f"browser tests need Playwright ({exc}): pip install -e '.[test]' "
            "(scripts/test does); it drives the system Chromium, no browser download",
            pytrace=False,
        )


def require_docker_images(*images: str) -> None:
    info = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True
    )
    if info.returncode != 0:
        pytest.fail(
            "browser tests need a running dockerd (scripts/test starts one): "
            + info.stderr.strip(),
            pytrace=False,
        )
    for image in images:
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
            name = image.split("/")[-1].split(":")[0]
            pytest.fail(
                f"image {image} is missing: run scripts/build-images --only {name} "
                "(scripts/test builds it)",
                pytrace=False,
            )


#: The Node client of test_jupyter_client.py: @jupyterlab/services at the version VS Code's
#: Jupyter extension ships, installed from its package-lock.json by ``npm ci``.
JUPYTER_CLIENT_DIR = Path(__file__).parent / "jupyter_client"


def require_jupyter_client() -> str:
    """The ``node`` that runs the Node Jupyter client, once its pinned packages are installed;
    fails saying how to get what is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "the Jupyter client test needs Node.js 18 or newer: apt-get install nodejs npm "
            "(scripts/test installs it)",
            pytrace=False,
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0] or 0) < 18:
        pytest.fail(
            f"{node} is Node.js {version}; the Jupyter client needs 18 or newer", pytrace=False
        )
    wanted = json.loads((JUPYTER_CLIENT_DIR / "package.json").read_text())["dependencies"]
    for package, pinned in wanted.items():
        installed = JUPYTER_CLIENT_DIR / "node_modules" / package / "package.json"
        found = json.loads(installed.read_text())["version"] if installed.exists() else None
        if found != pinned:
            pytest.fail(
                f"{package} {pinned} is not installed in {JUPYTER_CLIENT_DIR} "
                f"(found {found}): run npm ci there (scripts/test does)",
                pytrace=False,
            )
    return node


def artifacts_dir() -> Path:
    """Where failing tests leave screenshots and timings land: ``NBFLEET_TEST_ARTIFACTS``,
    else ``.state/test-artifacts/browser`` in the checkout."""
    configured = os.environ.get("NBFLEET_TEST_ARTIFACTS")
    path = Path(configured) if configured else REPO / ".state" / "test-artifacts" / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path
