"""What a notebook request asks for, checked before anything is stored: query parameters, the
catalog entries and labels of a new notebook, and the request a fork makes.

Every refusal is a 400 naming the field (or a 403 for a label a scoped token may not set); none
touches the database.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable
from typing import NamedTuple

from common import wire
from common.config import EditorSpec, FrameworkSpec, SchedulerConfig
from common.errors import ApiError, invalid
from common.states import NotebookState
from scheduler.datastores import stored_volumes
from scheduler.db import Row

S = NotebookState


def default_name(framework: str, editor: str) -> str:
    """``<framework>-<editor>-<4 hex>``, squeezed into the ``Name`` pattern."""
    stem = re.sub(r"[^a-z0-9-]+", "-", f"{framework}-{editor}".lower()).strip("-")[:56]
    stem = re.sub(r"-{2,}", "-", stem).strip("-") or "notebook"
    return f"{stem}-{secrets.token_hex(2)}"


def parse_label_selector(selector: str) -> tuple[str, str]:
    """``k=v`` from a ``label`` query parameter; anything else is a 400 naming ``label``."""
    key, sep, value = selector.partition("=")
    key_ok = re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?", key)
    value_ok = re.fullmatch(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?", value)
    if not sep or not key_ok or not value_ok:
        raise invalid(
            f"invalid query parameter `label`: {selector!r} is not a key=value selector",
            field="label",
        )
    return key, value


def parse_states(values: Iterable[str]) -> set[NotebookState]:
    states = set()
    for value in values:
        try:
            states.add(S(value.upper()))
        except ValueError:
            known = ", ".join(s.value for s in S)
            raise invalid(
                f"invalid query parameter `state`: {value!r} is not one of {known}",
                field="state",
            )
    return states


class CatalogChoice(NamedTuple):
    """What a new notebook runs: its framework, the version (and its image), its editor."""

    framework: FrameworkSpec
    version: str
    image: str
    editor: EditorSpec


def catalog_entries(request: wire.NotebookCreate, config: SchedulerConfig) -> CatalogChoice:
    """The framework, version and editor a new notebook asks for (the newest version unless
    it names one); 400 unless the catalog has them and the framework offers that editor."""
    catalog = config.catalog
    framework = catalog.frameworks.get(request.framework)
    if framework is None:
        raise invalid(
            f"invalid request: unknown framework {request.framework!r} "
            f"(known: {', '.join(sorted(catalog.frameworks)) or 'none'}) - at `$.framework`",
            field="$.framework",
        )
    version, image = framework_version(
        request.framework, framework, request.framework_version, "$.framework_version"
    )
    editor = catalog.editors.get(request.editor)
    if editor is None:
        raise invalid(
            f"invalid request: unknown editor {request.editor!r} "
            f"(known: {', '.join(sorted(catalog.editors)) or 'none'}) - at `$.editor`",
            field="$.editor",
        )
    if request.editor not in framework.editors:
        raise invalid(
            f"invalid request: framework {request.framework!r} does not offer editor "
            f"{request.editor!r} (it offers: {', '.join(framework.editors)}) - at `$.editor`",
            field="$.editor",
        )
    return CatalogChoice(framework, version, image, editor)


def framework_version(
    name: str, framework: FrameworkSpec, asked: str | None, field: str
) -> tuple[str, str]:
    """``(version, image)``: the version asked for, else the newest; 400 naming ``field``
    and the versions there are when the catalog has no such version."""
    versions = framework.all_versions()
    if asked is None:
        version = framework.newest()
        return version, versions[version].image
    spec = versions.get(asked)
    if spec is None:
        raise invalid(
            f"invalid request: framework {name!r} has no version {asked!r} "
            f"(versions: {', '.join(versions) or 'none'}) - at `{field}`",
            field=field,
        )
    return asked, spec.image


def labels_within(labels: dict[str, str], selector: dict[str, str] | None) -> dict[str, str]:
    """``labels`` with the scoped token's selector added; 403 if they set another value."""
    labels = dict(labels)
    for key, value in (selector or {}).items():
        if labels.setdefault(key, value) != value:
            raise ApiError(
                "forbidden",
                f"this token reaches only notebooks labelled {key}={value}; "
                f"the request sets {key}={labels[key]}",
                label=key,
            )
    return labels


def asked_units(row: Row, config: SchedulerConfig) -> tuple[int | None, int | None]:
    """``(gpu, cpu)`` as a ``run`` would ask for the notebook's resources: with a flavor, its
    GPUs or its CPU units (CPUs over the flavor's CPUs per unit)."""
    flavor = row["flavor"]
    if flavor is None:
        return row["gpu"], row["cpu"]
    spec = config.flavors.get(flavor)
    unit_cpu = spec.cpu if spec is not None else 1
    return (row["gpu"], None) if row["gpu"] else (None, row["cpu"] // unit_cpu)


def fork_request(
    source: Row, request: wire.NotebookFork, config: SchedulerConfig
) -> wire.NotebookCreate:
    """A new notebook like ``source`` (framework, editor, resources, labels, env, volumes),
    with what ``request`` changes."""
    overrides = request.gpu is not None or request.cpu is not None
    flavor = source["flavor"]
    gpu, cpu = (request.gpu, request.cpu) if overrides else asked_units(source, config)
    return wire.NotebookCreate(
        framework=source["framework"],
        editor=source["editor"],
        # The fork runs the software its source's workspace was made with.
        framework_version=source["framework_version"] or None,
        gpu=gpu,
        cpu=cpu,
        flavor=flavor,
        restart_on_timeout=bool(source["restart_on_timeout"]),
        idle_timeout_s=source["idle_timeout_s"],
        # Same workspace, same audience: a fork of a public notebook is public too.
        unsecure_http=bool(source["unsecure_http"]),
        name=request.name,
        labels=json.loads(source["labels"]) if request.labels is None else request.labels,
        envvars=json.loads(source["envvars"]),
        # Same data attached; aliases are checked again, as for any new notebook.
        volumes=stored_volumes(source),
        # Keys are a grant to people, not part of the workspace: only those given again.
        ssh_public_keys=request.ssh_public_keys,
    )
