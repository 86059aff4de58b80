"""The notebook URL scheme, shared by the scheduler (which forwards) and the agent's editor
proxy (which serves).

A notebook's URL is ``{scheduler}/notebooks/{id}/``, the same for its whole life, whichever
host it runs on. A request for ``/notebooks/{id}/{rest}?{query}`` is forwarded, as sent, to the
same path and query on the agent of the host that runs the notebook now
(``{agent_url}/notebooks/{id}/{rest}?{query}``), where the agent's proxy checks the token and
forwards to the editor.

**The editor's base URL.** ``{base_url}`` in an editor's ``command`` and ``url_path`` is
``/notebooks/{id}/``. ``Assignment.base_url`` is the prefix the editor itself serves under:
``/notebooks/{id}/`` when its catalog entry uses ``{base_url}`` (JupyterLab with
``--ServerApp.base_url={base_url}``: the proxy forwards paths unchanged), else ``/`` (an editor
that serves at its root, e.g. code-server: the proxy strips ``/notebooks/{id}``).
"""

from __future__ import annotations

#: The placeholder editors are told their base URL with.
BASE_URL_PLACEHOLDER = "{base_url}"


def editor_path(notebook_id: str) -> str:
    """The path of a notebook's editor, at the scheduler and at the agent alike."""
    return f"/notebooks/{notebook_id}/"


def with_slash(notebook_id: str, raw_path: str, raw_query: str) -> str | None:
    """Where a request for the bare ``/notebooks/{id}`` is sent (its slash added, query kept:
    the editor serves under ``/notebooks/{id}/``, on the same origin); ``None`` for any other
    path, which is forwarded as it is."""
    if raw_path != editor_path(notebook_id).rstrip("/"):
        return None
    return editor_path(notebook_id) + ("?" + raw_query if raw_query else "")


def editor_base_url(notebook_id: str, command_template: str, url_path_template: str) -> str:
    """``Assignment.base_url``: where the editor serves (see the module docstring)."""
    if BASE_URL_PLACEHOLDER in command_template or BASE_URL_PLACEHOLDER in url_path_template:
        return editor_path(notebook_id)
    return "/"
