"""The catalog's image tags, and the tiny test image: busybox-static on an empty rootfs, built
locally (no registry needed).

API:

``TINY_IMAGE = "nbfleet/tiny:1"``, ``TINY_IMAGE_2 = "nbfleet/tiny:2"``
    The tiny framework's two versions; they differ in ``/etc/nbfleet-release`` alone (``1``,
    ``2``), so a test can tell from inside a container which version it runs.

``CATALOG_IMAGES``
    Every image ``scripts/build-images`` (``all``) builds for the catalog, one per framework
    version: ``{(framework, version): "nbfleet/<framework>:<version>"}``.

``ensure_tiny_image(tag: str = TINY_IMAGE, *, rebuild: bool = False) -> str``
    Return ``tag`` once the image exists, building it with ``docker import`` when missing.
    Raises ``RuntimeError`` saying what is missing (docker CLI, dockerd, a static busybox).

``editor_command(port: int | str = "{port}") -> list[str]``
    The httpd "editor": ``["busybox", "httpd", "-f", "-p", "<port>", "-h", "/workspace"]``.

The image matches ``scripts/build-images --only tiny``: ``/bin/busybox`` with one symlink per
applet, ``/etc/passwd`` with ``notebook`` = 1000:1000 (home ``/workspace``), ``USER 1000:1000``,
``WORKDIR /workspace``, ``PATH=/bin``, ``/etc/nbfleet-release`` holding the tag's version, and
the labels ``org.nbfleet.framework`` (``tiny``), ``org.nbfleet.framework.version`` (the tag's
version) and ``org.nbfleet.contents.busybox`` (what the busybox in it says it is).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile

TINY_IMAGE = "nbfleet/tiny:1"
TINY_IMAGE_2 = "nbfleet/tiny:2"

CATALOG_IMAGES: dict[tuple[str, str], str] = {
    (framework, version): f"nbfleet/{framework}:{version}"
    for framework, version in [
        ("tiny", "1"),
        ("tiny", "2"),
        ("conda", "py3.11"),
        ("pytorch", "2.13"),
        ("tensorflow", "2.21"),
        ("huggingface", "5.18"),
        ("huggingface", "4.57"),
    ]
}

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "notebook:x:1000:1000:notebook:/workspace:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nnotebook:x:1000:\nnogroup:x:65534:\n"


def editor_command(port: int | str = "{port}") -> list[str]:
    return ["busybox", "httpd", "-f", "-p", str(port), "-h", "/workspace"]


def _docker(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["docker", *args], input=input, capture_output=True)


def _static_busybox() -> str:
    for candidate in ("/bin/busybox", "/usr/bin/busybox", shutil.which("busybox") or ""):
        if candidate and os.path.isfile(candidate):
            ldd = subprocess.run(["ldd", candidate], capture_output=True, text=True)
            if ldd.returncode != 0 or "not a dynamic executable" in ldd.stdout + ldd.stderr:
                return candidate
    raise RuntimeError(
        "building the tiny test image needs a static busybox (apt-get install busybox-static)"
    )


def _rootfs(busybox: str, release: str) -> bytes:
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def directory(name: str, mode: int = 0o755, uid: int = 0) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, uid
            tar.addfile(info)

        def link(name: str, target: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)

        def text(name: str, content: str) -> None:
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        for name in ("bin", "etc", "usr", "var", "var/www"):
            directory(name)
        directory("tmp", 0o1777)
        directory("root", 0o700)
        directory("workspace", 0o755, uid=1000)
        directory("data", 0o755, uid=1000)
        info = tar.gettarinfo(busybox, arcname="bin/busybox")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        with open(busybox, "rb") as binary:
            tar.addfile(info, binary)
        for applet in applets.stdout.split():
            if applet != "busybox":
                link(f"bin/{applet}", "busybox")
        link("usr/bin", "../bin")
        link("sbin", "bin")
        link("usr/sbin", "../bin")
        text("etc/passwd", PASSWD)
        text("etc/group", GROUP)
        text("etc/nbfleet-release", release + "\n")
    return buffer.getvalue()


def ensure_tiny_image(tag: str = TINY_IMAGE, *, rebuild: bool = False) -> str:
    if shutil.which("docker") is None:
        raise RuntimeError("the docker CLI is not on PATH; integration tests need dockerd")
    info = _docker("info", "--format", "{{.ServerVersion}}")
    if info.returncode != 0:
        raise RuntimeError(
            "dockerd is not reachable (docker info failed): " + info.stderr.decode().strip()
        )
    if not rebuild and _docker("image", "inspect", tag).returncode == 0:
        return tag
    version = tag.rpartition(":")[2] if ":" in tag.rpartition("/")[2] else "latest"
    result = _docker(
        "import",
        "--change",
        "ENV PATH=/bin HOME=/workspace",
        "--change",
        "USER 1000:1000",
        "--change",
        "WORKDIR /workspace",
        "--change",
        'CMD ["/bin/sh"]',
        "-",
        tag,
        input=_rootfs(_static_busybox(), version),
    )
    if result.returncode != 0:
        raise RuntimeError(f"docker import of {tag} failed: {result.stderr.decode().strip()}")
    _label(tag, version)
    return tag


def _label(tag: str, version: str) -> None:
    """Adds the catalog's labels to ``tag``, the busybox version as the image reports it."""
    shown = _docker("run", "--rm", "--network", "none", tag, "busybox", "--help")
    first = shown.stdout.decode().partition("\n")[0]  # "BusyBox v1.35.0 (Debian ...) multi-call"
    if shown.returncode != 0 or not first.startswith("BusyBox v"):
        raise RuntimeError(f"busybox in {tag} did not say its version: {shown.stderr.decode()}")
    labels = {
        "org.nbfleet.framework": "tiny",
        "org.nbfleet.framework.version": version,
        "org.nbfleet.contents.busybox": first.split()[1].removeprefix("v"),
    }
    args = [arg for name, value in labels.items() for arg in ("--label", f"{name}={value}")]
    built = subprocess.run(
        ["docker", "build", "-q", *args, "-t", tag, "-"],
        input=f"FROM {tag}\n".encode(),
        capture_output=True,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    if built.returncode != 0:
        raise RuntimeError(f"labelling {tag} failed: {built.stderr.decode().strip()}")
