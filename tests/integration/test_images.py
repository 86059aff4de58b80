"""The catalog's real images (scripts/build-images): their labels against what they hold, and
the editors and installs a notebook relies on.

Every catalog image, every version (tests.support.images.CATALOG_IMAGES), carries
``org.nbfleet.framework``, ``org.nbfleet.framework.version`` and one
``org.nbfleet.contents.<component>`` label per component a user cares about; the agents report
those labels and ``nbfleet catalog`` shows them, so here each image is run and asked what it
holds, and that must be what its labels say.

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
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.config import Catalog, EditorSpec, SchedulerConfig, load
from tests.support.images import CATALOG_IMAGES

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "config" / "scheduler.example.toml"
#: The frameworks' images with both editors (JupyterLab and code-server): all but tiny.
FRAMEWORK_IMAGES = {key: tag for key, tag in CATALOG_IMAGES.items() if key[0] != "tiny"}
BUILD_HINT = "run scripts/build-images (it builds every catalog image, parents first)"
DOCKER_TIMEOUT_S = 180
LABEL = "org.nbfleet."
CONTENTS = LABEL + "contents."
#: What each framework's contents labels must name at least (besides python, jupyterlab and
#: code-server for all but tiny); "tensorflow*" is tensorflow-cpu or tensorflow (a CUDA build).
REQUIRED_CONTENTS = {
    "tiny": {"busybox"},
    "conda": {"numpy", "pandas"},
    "pytorch": {"numpy", "pandas", "torch"},
    "tensorflow": {"numpy", "pandas", "tensorflow*", "keras"},
    "huggingface": {"numpy", "pandas", "torch", "transformers", "datasets", "accelerate"}
    | {"tokenizers", "safetensors", "huggingface-hub"},
}
#: Every package that gets a contents label when an image holds it (scripts/build-images'
#: contents_packages): an image holding one of these without its label fails as well.
LABELLED_PACKAGES = [
    "jupyterlab", "numpy", "pandas", "torch", "tensorflow", "tensorflow-cpu", "keras",
    "transformers", "tokenizers", "safetensors", "huggingface-hub", "datasets", "accelerate",
]  # fmt: skip
#: The component whose version the tag's version names ("py3.11": Python 3.11).
TAG_COMPONENT = {
    "conda": "python",
    "pytorch": "torch",
    "tensorflow": "tensorflow*",
    "huggingface": "transformers",
}


def docker(*args: str, timeout: float = DOCKER_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def image_id(key: tuple[str, str]) -> str:
    return f"{key[0]}:{key[1]}"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    config = load(SchedulerConfig, EXAMPLE_CONFIG, env_prefix="NBFLEET_TEST_UNUSED_")
    return config.catalog


@pytest.fixture(scope="module")
def images() -> dict[tuple[str, str], str]:
    """(framework, version) -> image tag, once dockerd answers and every image exists."""
    if shutil.which("docker") is None:
        pytest.fail(f"the docker CLI is not on PATH: start dockerd and {BUILD_HINT}", pytrace=False)
    info = docker("info", "--format", "{{.ServerVersion}}", timeout=30)
    if info.returncode != 0:
        pytest.fail(
            f"dockerd does not answer (docker info: {info.stderr.strip()}); start it and "
            + BUILD_HINT,
            pytrace=False,
        )
    missing = [tag for tag in CATALOG_IMAGES.values() if docker("image", "inspect", tag).returncode]
    if missing:
        pytest.fail(f"image(s) {', '.join(missing)} missing: {BUILD_HINT}", pytrace=False)
    return CATALOG_IMAGES


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


def labels(image: str) -> dict[str, str]:
    shown = docker("image", "inspect", "-f", "{{json .Config.Labels}}", image)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout) or {}


def contents_labels(image: str) -> dict[str, str]:
    return {
        name.removeprefix(CONTENTS): value
        for name, value in labels(image).items()
        if name.startswith(CONTENTS)
    }


def values_under(table: Any, key: str) -> Iterator[Any]:
    """Every value of ``key`` anywhere under ``table`` (TOML tables and arrays of tables)."""
    if isinstance(table, dict):
        for name, value in table.items():
            if name == key:
                yield value
            else:
                yield from values_under(value, key)
    elif isinstance(table, list):
        for item in table:
            yield from values_under(item, key)


def test_the_example_catalog_names_every_built_image_and_no_other() -> None:
    """Read as plain TOML (whatever shape a framework's versions take in it): the example
    config's catalog lists exactly the images scripts/build-images builds, and gives every
    real framework both editors."""
    with EXAMPLE_CONFIG.open("rb") as f:
        frameworks = tomllib.load(f)["catalog"]["frameworks"]
    named = set(values_under(frameworks, "image"))
    assert named == set(CATALOG_IMAGES.values()), (
        f"{EXAMPLE_CONFIG.name} names {sorted(named)}; scripts/build-images builds "
        f"{sorted(CATALOG_IMAGES.values())}"
    )
    for name, table in frameworks.items():
        if name == "tiny":
            continue
        for editors in values_under(table, "editors"):
            assert {"jupyterlab", "vscode"} <= set(editors), (name, editors)


# What a Python image holds, asked of it: the version of each component named on the command
# line, or null. Independent of scripts/build-images' own query on purpose.
HELD_SCRIPT = """
import json, platform, subprocess, sys
from importlib import metadata

def held(component):
    if component == "python":
        return platform.python_version()
    if component == "code-server":
        shown = subprocess.run(["code-server", "--version"], capture_output=True, text=True)
        return shown.stdout.split()[0] if shown.returncode == 0 else None
    try:
        return metadata.version(component)
    except metadata.PackageNotFoundError:
        return None

print(json.dumps({component: held(component) for component in sys.argv[1:]}))
"""


def held_by_tiny(image: str, workspace: Path) -> tuple[dict[str, str], str]:
    """busybox's version in a tiny image, and its /etc/nbfleet-release."""
    out = run(image, workspace, "sh", "-c", "busybox --help | head -n 1; cat /etc/nbfleet-release")
    first, release = out.splitlines()[:2]  # "BusyBox v1.35.0 (Debian ...) multi-call binary."
    return {"busybox": first.split()[1].removeprefix("v")}, release


@pytest.mark.parametrize("key", list(CATALOG_IMAGES), ids=image_id)
def test_labels_say_what_the_image_holds(
    key: tuple[str, str], images: dict[tuple[str, str], str], workspace: Path
) -> None:
    framework, version = key
    image = images[key]
    found = labels(image)
    assert found.get(LABEL + "framework") == framework, found
    assert found.get(LABEL + "framework.version") == version, found
    labelled = contents_labels(image)

    if framework == "tiny":
        held, release = held_by_tiny(image, workspace)
        assert release == version, f"{image}'s /etc/nbfleet-release says {release!r}"
    else:
        asked = sorted({"python", "code-server", *LABELLED_PACKAGES, *labelled})
        answer = json.loads(run(image, workspace, "python", "-c", HELD_SCRIPT, *asked))
        held = {component: v for component, v in answer.items() if v is not None}
    assert labelled == held, f"{image}'s contents labels {labelled} are not what it holds: {held}"

    required = set(REQUIRED_CONTENTS[framework])
    if framework != "tiny":
        required |= {"python", "jupyterlab", "code-server"}
    if "tensorflow*" in required:
        required.discard("tensorflow*")
        tensorflow = {"tensorflow", "tensorflow-cpu"} & set(labelled)
        assert len(tensorflow) == 1, f"{image} should hold one TensorFlow: {labelled}"
        required |= tensorflow
    assert required <= set(labelled), f"{image} lacks labels for {required - set(labelled)}"

    # The tag's version is the framework's own: py3.11 holds Python 3.11, pytorch:2.13 torch
    # 2.13.x, huggingface:4.57 transformers 4.57.x.
    if framework in TAG_COMPONENT:
        component = TAG_COMPONENT[framework]
        if component == "tensorflow*":
            component = next(c for c in ("tensorflow", "tensorflow-cpu") if c in labelled)
        assert labelled[component].startswith(version.removeprefix("py") + "."), (
            f"{image} holds {component} {labelled[component]}, not {version}"
        )


# How an image runs and is configured, printed by itself.
SETUP_SCRIPT = """
import json, os, shutil, subprocess
from importlib import metadata
found = {"uid": os.getuid(), "HOME": os.environ["HOME"], "cwd": os.getcwd()}
found["JupyterLab"] = metadata.version("jupyterlab")
lab = subprocess.run(["jupyter-lab", "--version"], capture_output=True, text=True, check=True)
found["jupyter-lab --version"] = lab.stdout.strip()
cs = subprocess.run(["code-server", "--version"], capture_output=True, text=True, check=True)
found["code-server --version"] = cs.stdout.split()[0]
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


@pytest.mark.parametrize("key", list(FRAMEWORK_IMAGES), ids=image_id)
def test_runs_unprivileged_with_workspace_home_and_lean_editors(
    key: tuple[str, str], images: dict[tuple[str, str], str], workspace: Path
) -> None:
    image = images[key]
    found = json.loads(run(image, workspace, "python", "-c", SETUP_SCRIPT))
    assert found["uid"] == 1000, "the editor must not run as root"
    assert found["HOME"] == "/workspace" and found["cwd"] == "/workspace"
    assert found["jupyter-lab --version"] == found["JupyterLab"]
    assert found["code-server --version"] == contents_labels(image)["code-server"]
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


# Each framework at work, as the notebook user, without a network: a computation, and the
# versions the modules themselves report (which the contents labels must repeat).
FRAMEWORK_SCRIPTS = {
    "conda": """
import json, numpy, pandas
frame = pandas.DataFrame({"x": numpy.arange(4)})
assert int(frame["x"].sum()) == 6
print(json.dumps({"numpy": numpy.__version__, "pandas": pandas.__version__}))
""",
    "pytorch": """
import json, torch
assert torch.equal(torch.ones(2) + 1, torch.tensor([2.0, 2.0]))
print(json.dumps({"torch": torch.__version__}))
""",
    "tensorflow": """
import json, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import keras, numpy, tensorflow as tf
assert float(tf.reduce_sum(tf.constant([1.0, 2.0]))) == 3.0
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
assert model.predict(numpy.ones((1, 3)), verbose=0).shape == (1, 2)
from importlib import metadata
try:  # the CPU build's distribution, or the CUDA build's
    dist = metadata.version("tensorflow-cpu") and "tensorflow-cpu"
except metadata.PackageNotFoundError:
    dist = "tensorflow"
print(json.dumps({dist: tf.__version__, "keras": keras.__version__}))
""",
    "huggingface": """
import json
import accelerate, datasets, torch, transformers
config = transformers.BertConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=32,
)
model = transformers.BertModel(config).eval()
with torch.no_grad():
    out = model(input_ids=torch.tensor([[1, 2, 3]]))
assert tuple(out.last_hidden_state.shape) == (1, 3, 16)
rows = datasets.Dataset.from_dict({"x": [1, 2, 3]}).map(lambda row: {"y": row["x"] * 2})
assert rows["y"] == [2, 4, 6]
accelerator = accelerate.Accelerator(cpu=True)
assert accelerator.device.type == "cpu"
print(json.dumps({
    "transformers": transformers.__version__, "datasets": datasets.__version__,
    "accelerate": accelerate.__version__, "torch": torch.__version__,
}))
""",
}


@pytest.mark.parametrize("key", list(FRAMEWORK_IMAGES), ids=image_id)
def test_the_framework_works_as_the_notebook_user_at_the_labelled_versions(
    key: tuple[str, str], images: dict[tuple[str, str], str], workspace: Path
) -> None:
    image = images[key]
    reported = json.loads(run(image, workspace, "python", "-c", FRAMEWORK_SCRIPTS[key[0]]))
    labelled = contents_labels(image)
    for component, version in reported.items():
        assert labelled.get(component) == version, (
            f"{image}: {component} says it is {version}, its label {labelled.get(component)}"
        )


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


@pytest.mark.parametrize("key", list(FRAMEWORK_IMAGES), ids=image_id)
def test_user_installs_land_in_the_workspace_and_survive_a_new_container(
    key: tuple[str, str], images: dict[tuple[str, str], str], workspace: Path, tmp_path: Path
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    probe_wheel(wheels)
    offline = "--no-index --find-links /wheels nbf_probe"
    image = images[key]

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
@pytest.mark.parametrize("key", list(FRAMEWORK_IMAGES), ids=image_id)
def test_catalog_editor_command_serves_on_its_port(
    key: tuple[str, str],
    editor: str,
    images: dict[tuple[str, str], str],
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
        "-p", f"127.0.0.1::{spec.port}", images[key], *editor_command(spec, token),
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
