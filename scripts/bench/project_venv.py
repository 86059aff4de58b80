"""The benchmark scripts run on the project's venv, whichever ``python3`` PATH finds first.

Their shebang is ``/usr/bin/env python3``, which on a stock Debian machine is the system Python
without nbfleet's dependencies (and under ``sudo`` always is). ``scripts/quickstart`` and
``scripts/test`` make the venv (``.venv``, or ``NBFLEET_VENV``); a script started by an
interpreter outside any virtual environment replaces itself with the venv's before it imports
anything of the project's. One started by another venv's python was asked for explicitly, and
stays.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def use_project_venv(repo: Path) -> None:
    venv = Path(os.environ.get("NBFLEET_VENV") or repo / ".venv")
    python = venv / "bin" / "python"
    if sys.prefix != sys.base_prefix:  # already in a virtual environment: this one or chosen
        return
    if not python.exists():
        sys.exit(
            f"{Path(sys.argv[0]).name}: no virtual environment at {venv}; "
            "scripts/test or scripts/quickstart makes it"
        )
    os.execv(python, [str(python), *sys.argv])
