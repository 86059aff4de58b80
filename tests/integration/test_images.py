"""The catalog's real images (scripts/build-images) against the catalog that names them.

Each image runs the way the agent runs it: as 1000:1000, all capabilities dropped, a host
directory bind-mounted as /workspace, and here with no network at all, so nothing below needs
a registry. Missing dockerd or a missing image is a failure that says to run
scripts/build-images, never a skip.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.config import Catalog, EditorSpec, SchedulerConfig, load

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "config" / "scheduler.example.toml"
#: The frameworks scripts/build-images builds with both editors (tiny has its own test image).
FRAMEWORKS = ["conda", "pytorch"]
BUILD_HINT = "run scripts/build-images (--only pytorch builds conda too)"
DOCKER_TIMEOUT_S = 120


def docker(*args: str, timeout: float = DOCKER_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    config = load(SchedulerConfig, EXAMPLE_CONFIG, env_prefix="NBFLEET_TEST_UNUSED_")
    return config.catalog


@pytest.fixture(scope="module")
def images(catalog: Catalog) -> dict[str, str]:
    """framework name -> image tag, once dockerd answers and every image exists."""
    if shutil.which("docker") is None:
        pytest.fail(f"the docker CLI is not on PATH: start dockerd and {BUILD_HINT}", pytrace=False)
    info = docker("info", "--format", "{{.ServerVersion}}", timeout=30)
    if info.returncode != 0:
        pytest.fail(
            f"dockerd does not answer (docker info: {info.stderr.strip()}); start it and "
            + BUILD_HINT,
            pytrace=False,
        )
    tags = {name: catalog.frameworks[name].image for name in FRAMEWORKS}
    missing = [tag for tag in tags.values() if docker("image", "inspect", tag).returncode != 0]
    if missing:
        pytest.fail(f"image(s) {', '.join(missing)} missing: {BUILD_HINT}", pytrace=False)
    return tags


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """An empty workspace owned by the notebook user, as the agent hands it to a container."""
    path = tmp_path / "workspace"
    path.mkdir()
    try:
        os.chown(path, 1000, 1000)
    except PermissionError:  # not root: let the notebook user write all the same
        path.chmod(0o777)
    return path


def run(image: str, workspace: Path, *command: str, mounts: tuple[str, ...] = ()) -> str:
    """Runs ``command`` in a fresh container the way the agent would; its stdout, or a failure
    with everything the container printed."""
    args = ["run", "--rm", "--network", "none", "--user", "1000:1000", "--cap-drop", "ALL"]
    args += ["--security-opt", "no-new-privileges", "-v", f"{workspace}:/workspace"]
    for mount in mounts:
        args += ["-v", mount]
    result = docker(*args, image, *command)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} in {image} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
    return result.stdout


# What an image ships, printed by itself (the catalog's descriptions must name these).
VERSIONS_SCRIPT = """
import json, os, platform, shutil, subprocess
from importlib import metadata
found = {"uid": os.getuid(), "HOME": os.environ["HOME"], "cwd": os.getcwd()}
found |= {"Python": platform.python_version(), "JupyterLab": metadata.version("jupyterlab")}
try:
    import torch
    found["torch"] = torch.__version__
except ImportError:
    pass
cs = subprocess.run(["code-server", "--version"], capture_output=True, text=True, check=True)
found["code-server"] = cs.stdout.split()[0]
lab = subprocess.run(["jupyter-lab", "--version"], capture_output=True, text=True, check=True)
found["jupyter-lab --version"] = lab.stdout.strip()
try:
    found["rfc3987_syntax"] = metadata.version("rfc3987-syntax")
except metadata.PackageNotFoundError:
    found["rfc3987_syntax"] = None
found["node on PATH"] = [n for n in ("node", "nodejs") if shutil.which(n)]
# What JupyterLab is configured with, as it reads it (system config, then the user's).
shown = subprocess.run(
    ["jupyter-lab", "--show-config-json"], capture_output=True, text=True, check=True
)
lab = json.loads(shown.stdout).get("LabApp", {})
found["lab config"] = {k: lab.get(k) for k in ("extension_manager", "news_url")}
from jupyterlab_server.config import get_page_config
from jupyter_core.paths import jupyter_config_path
labconfig = [os.path.join(p, "labconfig") for p in jupyter_config_path()]
found["disabled"] = sorted(get_page_config(labconfig).get("disabledExtensions", {}))
print(json.dumps(found))
"""


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_runs_unprivileged_with_workspace_home_and_catalog_versions(
    framework: str, images: dict[str, str], catalog: Catalog, workspace: Path
) -> None:
    found = json.loads(run(images[framework], workspace, "python", "-c", VERSIONS_SCRIPT))
    assert found["uid"] == 1000, "the editor must not run as root"
    assert found["HOME"] == "/workspace" and found["cwd"] == "/workspace"
    assert found["jupyter-lab --version"] == found["JupyterLab"]
    if framework == "pytorch":
        assert found["torch"].startswith("2.13.0")
    description = catalog.frameworks[framework].description
    for name in ("Python", "JupyterLab", "code-server") + (("torch",) if "torch" in found else ()):
        assert f"{name} {found[name]}" in description, (
            f"catalog.frameworks.{framework}.description should name {name} {found[name]}, "
            f"what the image ships: {description!r}"
        )
    assert set(catalog.frameworks[framework].editors) >= {"jupyterlab", "vscode"}
    # Importing it made JupyterLab's server start take twice as long (the conda Dockerfile).
    assert found["rfc3987_syntax"] is None, "rfc3987-syntax is back in the image"
    # With a node on PATH JupyterLab runs yarn (0.9 s) at every server start and page load;
    # code-server's Node.js is its own (the conda Dockerfile).
    assert found["node on PATH"] == [], "Node.js is on the editor's PATH again"
    assert found["lab config"] == {"extension_manager": "readonly", "news_url": None}
    assert "@jupyterlab/apputils-extension:announcements" in found["disabled"]
    # code-server --version ran with the workspace as home: its config is the image's, so it
    # left no password file of its own there.
    assert not (workspace / ".config" / "code-server").exists()


def probe_wheel(directory: Path) -> Path:
    """A tiny pure-Python wheel, written by hand: building it needs neither a network nor a
    build backend. One module and one console script."""
    name, version = "nbf_probe", "1.0"
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": "def main():\n    print('probe', __file__)\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: nbfleet-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
        f"{dist_info}/entry_points.txt": f"[console_scripts]\nnbf-probe = {name}:main\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    wheel.write_bytes(buffer.getvalue())
    return wheel


INSTALL_THEN_IMPORT = """
import subprocess, sys
pip = [sys.executable, "-m", "pip", "install", "-q", "--user"]
subprocess.run(pip + "{offline}".split(), check=True)
import nbf_probe
"""


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_user_installs_land_in_the_workspace_and_survive_a_new_container(
    framework: str, images: dict[str, str], workspace: Path, tmp_path: Path
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    probe_wheel(wheels)
    offline = "--no-index --find-links /wheels nbf_probe"
    image = images[framework]

    # First container, on a new workspace: pip install --user from a running Python (as
    # `%pip install` in a kernel) is importable at once, without a restart; and a venv of the
    # user's own in the workspace.
    run(
        image,
        workspace,
        "sh",
        "-ec",
        f"python -c {shlex.quote(INSTALL_THEN_IMPORT.format(offline=offline))}; "
        f"python -m venv /workspace/venv; /workspace/venv/bin/pip install -q {offline}",
        mounts=(f"{wheels}:/wheels:ro",),
    )

    site = workspace / ".local" / "lib" / "python3.11" / "site-packages"
    assert (site / "nbf_probe.py").is_file(), "pip install --user did not land in the workspace"
    assert (workspace / ".local" / "bin" / "nbf-probe").is_file()
    assert (site / "nbf_probe.py").stat().st_uid == 1000

    # Second, new container on the same workspace: both installs are still there and used.
    out = run(
        image,
        workspace,
        "sh",
        "-c",
        "nbf-probe; python -c 'import nbf_probe; print(nbf_probe.__file__)'; "
        "/workspace/venv/bin/python -c 'import nbf_probe; print(nbf_probe.__file__)'",
    )
    script, user_site, venv = out.splitlines()
    assert script == "probe /workspace/.local/lib/python3.11/site-packages/nbf_probe.py"
    assert user_site == "/workspace/.local/lib/python3.11/site-packages/nbf_probe.py"
    assert venv == "/workspace/venv/lib/python3.11/site-packages/nbf_probe.py"


def editor_command(spec: EditorSpec, token: str) -> list[str]:
    """The command the scheduler hands the agent ({token}, {port}, {base_url} filled in)."""
    fill = {"{token}": token, "{port}": str(spec.port), "{base_url}": "/"}
    command = []
    for part in spec.command:
        for key, value in fill.items():
            part = part.replace(key, value)
        command.append(part)
    return command


@pytest.fixture
def editor_container() -> Iterator[list[str]]:
    """Names of editor containers started by a test; removed afterwards, logs shown on
    failure (pytest prints captured output of failed tests only)."""
    names: list[str] = []
    yield names
    for name in names:
        logs = docker("logs", "--tail", "40", name)
        print(f"----- {name} logs -----\n{logs.stdout}{logs.stderr}")
        docker("rm", "-f", name)


def wait_http(
    url: str, deadline_s: float, what: str, container: str, not_yet: tuple[int, ...] = ()
) -> tuple[int, str]:
    """Polls ``url`` until it answers below 500 and not with a status in ``not_yet``;
    (status, Location) of that answer."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return None

    opener = urllib.request.build_opener(NoRedirect)
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=2) as response:
                return response.status, response.headers.get("Location", "")
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code not in not_yet:
                return exc.code, exc.headers.get("Location", "")
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        state = docker("inspect", "-f", "{{.State.Status}}", container).stdout.strip()
        if state not in ("created", "running"):
            pytest.fail(f"{what}: the container is {state} before answering", pytrace=False)
        time.sleep(0.25)
    pytest.fail(f"{what} did not answer {url} within {deadline_s:.0f}s ({last})", pytrace=False)


@pytest.mark.parametrize("editor", ["jupyterlab", "vscode"])
def test_catalog_editor_command_serves_on_its_port(
    editor: str,
    images: dict[str, str],
    catalog: Catalog,
    workspace: Path,
    editor_container: list[str],
) -> None:
    spec = catalog.editors[editor]
    token = secrets.token_hex(16)
    name = f"nbfleet-test-images-{editor}-{secrets.token_hex(4)}"
    editor_container.append(name)
    started = docker(
        "run", "-d", "--name", name, "--user", "1000:1000", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "-v", f"{workspace}:/workspace",
        "-p", f"127.0.0.1::{spec.port}", images["pytorch"], *editor_command(spec, token),
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    port = docker("port", name, f"{spec.port}/tcp").stdout.split(":")[-1].strip()
    base = f"http://127.0.0.1:{port}"
    path = spec.url_path.replace("{token}", token).replace("{base_url}", "/")

    if editor == "vscode":
        # No login page of its own: the proxy authenticates, so / goes straight to the folder.
        # code-server listens before its routes are mounted: a 404 at / right after the start
        # (seen once in CI) means "not yet", not "no folder page".
        status, location = wait_http(f"{base}/", 60, "code-server", name, not_yet=(404,))
        assert status == 302 and "login" not in location, (status, location)
        status, _ = wait_http(base + path, 10, "code-server's workbench", name)
        assert status == 200
        assert not (workspace / ".config" / "code-server").exists()
        user_data = workspace / ".local" / "share" / "code-server"
        assert not (user_data / "code-server-ipc.sock").exists()
    else:
        status, _ = wait_http(f"{base}/api/status?token={token}", 60, "JupyterLab", name)
        assert status == 200
        status, _ = wait_http(base + path, 10, "JupyterLab's page", name)
        assert status == 200
        status, _ = wait_http(f"{base}/api/status", 10, "JupyterLab without a token", name)
        assert status == 403
