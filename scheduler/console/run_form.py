"""The console's run form: everything ``nbfleet notebook run`` takes, decoded by the API's
own decoder (so its messages are the API's), with the equivalent CLI command beside it.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from aiohttp import web

from common import durations, wire
from common.errors import ApiError
from common.volume_spec import VolumeSyntaxError, parse_volume
from scheduler.api.context import ctx
from scheduler.console.web import (
    Viewer,
    render,
    secured,
    see_other,
)

RUN_FIELDS = (
    "framework",
    "framework_version",
    "editor",
    "flavor",
    "gpu",
    "cpu",
    "name",
    "idle_timeout",
    "labels",
    "envvars",
    "volumes",
    "ssh_public_keys",
    "restart_on_timeout",
    "unsecure_http",
)


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def pairs(text: str, what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for line in lines(text):
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ApiError("invalid_request", f"{what}: {line!r} is not KEY=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


def run_request(form: dict[str, str]) -> wire.NotebookCreate:
    """The form as the API's request, checked by the API's own decoder (its messages)."""
    body: dict[str, Any] = {
        "framework": form.get("framework", ""),
        "editor": form.get("editor", ""),
    }
    for field in ("gpu", "cpu"):
        text = form.get(field, "").strip()
        if text:
            try:
                body[field] = int(text)
            except ValueError:
                raise ApiError(
                    "invalid_request", f"invalid request: {field} {text!r} is not a number"
                )
    for field in ("flavor", "name", "framework_version"):
        if form.get(field, "").strip():
            body[field] = form[field].strip()
    idle = form.get("idle_timeout", "").strip()
    if idle:
        try:
            body["idle_timeout_s"] = durations.parse(idle)
        except ValueError as exc:
            raise ApiError("invalid_request", f"idle timeout: {exc}")
    body["labels"] = pairs(form.get("labels", ""), "labels")
    body["envvars"] = pairs(form.get("envvars", ""), "environment variables")
    volumes = []
    for line in lines(form.get("volumes", "")):
        try:
            volume = parse_volume(line)
        except VolumeSyntaxError as exc:
            raise ApiError("invalid_request", str(exc).removeprefix("--volume "))
        volumes.append(
            {
                f: getattr(volume, f)
                for f in ("container", "alias", "prefix", "mount_path", "permission")
            }
        )
    body["volumes"] = volumes
    body["ssh_public_keys"] = lines(form.get("ssh_public_keys", ""))
    body["restart_on_timeout"] = form.get("restart_on_timeout") == "on"
    body["unsecure_http"] = form.get("unsecure_http") == "on"
    return wire.decode(json.dumps(body).encode(), wire.NotebookCreate)


def cli_command(form: dict[str, str]) -> str:
    """The ``nbfleet notebook run`` that asks for what the form does."""
    words = ["nbfleet", "notebook", "run", form.get("framework", ""), form.get("editor", "")]
    for field, flag in (
        ("framework_version", "--framework-version"),
        ("flavor", "--flavor"),
        ("gpu", "--gpu"),
        ("cpu", "--cpu"),
        ("name", "--name"),
        ("idle_timeout", "--idle-timeout"),
    ):
        if form.get(field, "").strip():
            words += [flag, form[field].strip()]
    for field, flag in (("labels", "--label"), ("envvars", "--envvar"), ("volumes", "--volume")):
        for line in lines(form.get(field, "")):
            words += [flag, line]
    for _ in lines(form.get("ssh_public_keys", "")):
        words += ["--ssh-public-keys", "KEY"]
    if form.get("restart_on_timeout") == "on":
        words.append("--restart-on-timeout")
    if form.get("unsecure_http") == "on":
        words.append("--unsecure-http")
    command = " ".join(shlex.quote(w) for w in words if w != "")
    return command.replace("KEY", "~/.ssh/id_ed25519.pub")


async def _defaults(request: web.Request) -> dict[str, str]:
    """A blank form: the catalog's first framework and its first editor, and one GPU if the
    fleet has GPUs, else one CPU (what a first notebook on a CPU-only fleet needs)."""
    context = ctx(request)
    catalog = context.config.catalog
    framework = next(iter(catalog.frameworks), "")
    editors = catalog.frameworks[framework].editors if framework else []
    gpus = any(host.gpus for host in await context.hosts.list())
    return {
        "framework": framework,
        "editor": editors[0] if editors else "",
        **({"gpu": "1"} if gpus else {"cpu": "1"}),
    }


def _form_page(
    request: web.Request, who: Viewer, form: dict[str, str], status: int = 200, error: str = ""
) -> web.Response:
    config = ctx(request).config
    return render(
        request,
        "run.html",
        status,
        form={f: form.get(f, "") for f in RUN_FIELDS},
        error=error,
        command=cli_command(form),
        frameworks=config.catalog.frameworks,
        editors=config.catalog.editors,
        flavors=config.flavors,
        who=who,
        signed_in=True,
    )


async def run_form(request: web.Request, who: Viewer) -> web.StreamResponse:
    asked = {k: v for k, v in request.query.items() if k in RUN_FIELDS}
    if request.query.get("fragment") == "command":
        return secured(web.Response(text=cli_command(asked), content_type="text/plain"))
    return _form_page(request, who, {**await _defaults(request), **asked})


async def run(request: web.Request, who: Viewer) -> web.StreamResponse:
    assert who.principal is not None
    posted = await request.post()
    form = {f: str(posted.get(f, "")) for f in RUN_FIELDS}
    try:
        body = run_request(form)
        nb = await ctx(request).notebooks.create(
            who.principal.project, body, selector=who.principal.selector
        )
    except ApiError as exc:
        return _form_page(request, who, form, exc.status, exc.message)
    raise see_other(f"/console/notebooks/{nb.id}")
