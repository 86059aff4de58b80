"""The catalog as users see it (``GET /v1/catalog``): the frameworks and versions the
configuration offers, each with what its image holds as the hosts' agents read it from the
image's labels, and the editors and flavors.

The configuration says which image a version runs; only the image says what is in it. So the
contents shown are the labels of the image as found on the hosts (``AgentRegister.images``,
``hosts.images``), never text an operator wrote: a rebuilt image shows its new contents once
its hosts' agents register it. Where hosts disagree (an image rebuilt on some hosts only), the
contents most hosts have are shown. Lost hosts do not count.
"""

from __future__ import annotations

import json
from collections import Counter

import msgspec

from common import wire
from common.config import SchedulerConfig, image_ref
from common.states import HostState
from scheduler.db import Database

_IMAGES = msgspec.json.Decoder(list[wire.HostImage])


async def host_images(db: Database) -> list[list[wire.HostImage]]:
    """The images each live host last registered."""
    async with db.read() as tx:
        rows = await tx.all("SELECT images FROM hosts WHERE state = ?", (HostState.READY.value,))
    return [_IMAGES.decode(row["images"]) for row in rows]


def catalog(config: SchedulerConfig, hosts: list[list[wire.HostImage]]) -> wire.Catalog:
    """The catalog of ``config`` with the contents ``hosts`` report for each version's image."""
    found: dict[str, Counter[str]] = {}
    for images in hosts:
        for image in images:
            key = json.dumps(image.contents, sort_keys=True)
            for tag in set(image.tags):
                found.setdefault(tag, Counter())[key] += 1
    frameworks = []
    for name, framework in sorted(config.catalog.frameworks.items()):
        versions = []
        for version, spec in framework.all_versions().items():
            seen = found.get(image_ref(spec.image), Counter())
            contents = json.loads(seen.most_common(1)[0][0]) if seen else {}
            versions.append(
                wire.CatalogVersion(
                    version=version,
                    image=spec.image,
                    contents=contents,
                    hosts=sum(seen.values()),
                    description=spec.description,
                )
            )
        frameworks.append(
            wire.CatalogFramework(
                name=name,
                image=versions[0].image if versions else "",
                editors=list(framework.editors),
                description=framework.description,
                versions=versions,
            )
        )
    return wire.Catalog(
        frameworks=frameworks,
        editors=[
            wire.CatalogEditor(name=name, port=e.port, description=e.description)
            for name, e in sorted(config.catalog.editors.items())
        ],
        flavors=[
            wire.CatalogFlavor(
                name=name,
                gpu_model=f.gpu_model,
                cpu=f.cpu,
                memory_mb=f.memory_mb,
                disk_gb=f.disk_gb,
                description=f.description,
            )
            for name, f in sorted(config.flavors.items())
        ],
    )
