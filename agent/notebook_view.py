"""What the agent's own servers may see of the notebooks on this host: the editor proxy
(:class:`agent.proxy_paths.Editor`), the SSH server (:class:`agent.ssh.SshTarget`) and exec (the
user a command runs as).

Only notebooks assigned here are visible. A notebook's state is the one this agent last set
(or the scheduler's, before the agent has worked on the run), and its editor is reachable only
while the scheduler wants it running and the container of the agent's current run runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.proxy_paths import Editor
from agent.ssh import SshTarget

if TYPE_CHECKING:
    from agent.reconcile import Reconciler


class NotebookView:
    """Read-only, over the dispatcher's assignments and containers and its records."""

    def __init__(self, reconciler: Reconciler) -> None:
        self._reconciler = reconciler

    def editor(self, notebook: str) -> Editor | None:
        """What the proxy may know of ``notebook``: ``None`` unless it is assigned here."""
        assignment = self._reconciler.assignments.get(notebook)
        if assignment is None:
            return None
        record = self._reconciler.records.get(notebook)
        state = record.state if record is not None else assignment.state
        info = self._reconciler.containers.get(notebook)
        running_here = (
            assignment.desired == "running"
            and info is not None
            and info.running
            and (record is None or info.generation == record.generation)
        )
        return Editor(
            notebook=notebook,
            state=state,
            port=info.host_port if running_here and info is not None else None,
            base_url=assignment.base_url,
            access_token=assignment.access_token,
            unsecure_http=assignment.unsecure_http,
        )

    def ssh_target(self, notebook: str) -> SshTarget | None:
        """A notebook SSH may enter: running here, in its container, with keys."""
        assignment = self._reconciler.assignments.get(notebook)
        editor = self.editor(notebook)
        if assignment is None or editor is None or editor.port is None:
            return None
        keys = tuple(assignment.ssh_public_keys)
        if not keys:
            return None
        return SshTarget(notebook, keys, assignment.user)

    def user(self, notebook: str) -> str:
        """Who a command in the notebook's container runs as; "" (the image's user) when the
        notebook is not assigned here."""
        assignment = self._reconciler.assignments.get(notebook)
        return assignment.user if assignment is not None else ""
