"""Simulated users: the CLI's own client (:class:`cli.client.Client`) in threads, sending one
test's notebook commands to several scheduler URLs and keeping what the answers said.

Requests take turns at the URLs' order: one lists them as given, the next reversed, so half
of them go first to the first URL and half to the second, each failing over as the CLI does
(:mod:`common.failover`). A request the client gave up on with ``upstream_unavailable`` (no URL
answered, or a POST that was sent and got no reply, which the client never sends twice) may
have been applied: it is kept in ``unanswered``, and for the notebook commands below the
scheduler is asked what happened before the command is sent again. Any other error fails the
test (``AssertionError``).

API:

``eventually(what, probe, timeout_s, every_s=0.25)``
    Poll ``probe`` (sync or async) until it returns something truthy, and return that; an
    ``AssertionError`` from it fails at once, other errors are retried. Fails saying what it
    waited for and what it saw last.

``Tracked(seq, project, keep_running)``
    One notebook as the test knows it: ``id`` and ``generation`` from the last reply to a
    command; ``wanted``, the state its last command asks for (``keep_running``: RUNNING).

``Users(urls, admin_token, *, framework, editor)``
    ``await create_projects(names)``: each project and a token of it (through the admin token).
    ``await run(nb)``, ``await stop(nb)``, ``await start(nb)``: the command, sent until one
    was applied (five attempts; a notebook is created with the label ``seq=<seq>`` and a GPU,
    so an unanswered create is looked up by it, and one found twice fails the test).
    ``await answer(what, project, path, reply, **kw)``: a GET (as ``project``, or ``"admin"``),
    asked until a URL answers. ``await watch()``: lists every project's notebooks twice a
    second until cancelled (run it as a task); ``reached(nb, state)`` and
    ``settled(notebooks)`` wait on those listings. ``close()`` drops the threads.

What the users saw, for the test to judge (written on the event loop's thread only, except
``executing``):

``requests``: requests sent; ``executing``: requests in the client's hands right now;
``done``: commands applied; ``unanswered``: the requests that got no answer.
``states``: each notebook as last listed by :meth:`Users.watch`.
``entered_by``: ``{(notebook, generation): a time by which its run or start was committed}``
    (the test's clock, taken when the reply arrived).
``unqueued_by``: ``{(notebook, generation): a time by which it had left QUEUED}``, as the
    listings showed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cli.client import Client
from common import wire
from common.config import ClientConfig
from common.errors import ApiError
from common.states import NotebookState

S = NotebookState


async def eventually(what: str, probe: Callable[[], Any], timeout_s: float, every_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if isinstance(last, Awaitable):
                last = await last
        except AssertionError:
            raise
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}")


@dataclass
class Tracked:
    seq: int
    project: str
    keep_running: bool
    id: str = ""
    generation: int = 0

    @property
    def wanted(self) -> NotebookState:
        return S.RUNNING if self.keep_running else S.STOPPED


class Users:
    def __init__(self, urls: list[str], admin: str, *, framework: str, editor: str) -> None:
        self.orders = [urls, urls[::-1]]
        self.admin = admin
        self.framework = framework
        self.editor = editor
        self.tokens: dict[str, str] = {}
        self.executor = ThreadPoolExecutor(16, thread_name_prefix="user")
        self.requests = self.executing = self.done = 0
        self._executing = threading.Lock()
        self.unanswered: list[str] = []
        self.entered_by: dict[tuple[str, int], float] = {}
        self.states: dict[str, wire.Notebook] = {}
        self.unqueued_by: dict[tuple[str, int], float] = {}

    async def call(self, token: str, method: str, path: str, reply: Any = wire.Notebook, **kw):
        """The reply, or ``None`` when no URL answered (it may have been applied)."""
        client = Client(ClientConfig(url=self.orders[self.requests % 2], token=token))
        self.requests += 1

        def send() -> Any:
            with self._executing:
                self.executing += 1
            try:
                return client.call(method, path, reply, **kw)
            finally:
                with self._executing:
                    self.executing -= 1

        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, send)
        except ApiError as exc:
            if exc.code != "upstream_unavailable":
                raise AssertionError(f"{method} {path}: {exc.code}: {exc}") from exc
            self.unanswered.append(f"{method} {path}: {exc}")
            return None

    async def answer(self, what: str, project: str, path: str, reply: Any = wire.Notebook, **kw):
        token = self.admin if project == "admin" else self.tokens[project]
        return await eventually(what, lambda: self.call(token, "GET", path, reply, **kw), 60)

    async def create_projects(self, names: Iterable[str]) -> None:
        for project in names:
            body = wire.ProjectCreate(name=project)
            await self.call(self.admin, "POST", "/v1/admin/projects", wire.Project, body=body)
            body = wire.TokenCreate(project=project)
            made = await self.call(
                self.admin, "POST", "/v1/admin/tokens", wire.TokenCreated, body=body
            )
            self.tokens[project] = made.token

    def _applied(self, nb: Tracked, reply: wire.Notebook) -> None:
        nb.id, nb.generation = reply.id, reply.generation
        self.entered_by.setdefault((reply.id, reply.generation), time.time())
        self.done += 1

    async def run(self, nb: Tracked) -> None:
        labels = {"seq": str(nb.seq)}
        body = wire.NotebookCreate(
            framework=self.framework, editor=self.editor, gpu=1, labels=labels
        )
        for _ in range(5):
            made = await self.call(self.tokens[nb.project], "POST", "/v1/notebooks", body=body)
            if made is None:  # created or not? Its label says.
                query = [("label", f"seq={nb.seq}")]
                what = f"a list of seq={nb.seq}"
                listed = wire.NotebookList
                found = await self.answer(what, nb.project, "/v1/notebooks", listed, query=query)
                assert len(found.items) <= 1, f"seq={nb.seq} was created twice: {found.items}"
                if not found.items:
                    continue
                made = found.items[0]
            return self._applied(nb, made)
        raise AssertionError(f"notebook seq={nb.seq} was not created in 5 attempts")

    async def act(self, nb: Tracked, verb: str, applied: Callable[[wire.Notebook], bool]) -> None:
        """``POST .../{verb}``; when no URL answered, ``applied`` judges the notebook as it is
        now, and an action not applied is sent again."""
        path = f"/v1/notebooks/{nb.id}"
        for _ in range(5):
            reply = await self.call(self.tokens[nb.project], "POST", f"{path}/{verb}")
            if reply is None:
                reply = await self.answer(f"notebook {nb.id}", nb.project, path)
                if not applied(reply):
                    continue
            return self._applied(nb, reply)
        raise AssertionError(f"notebook {nb.id}: {verb} was not applied in 5 attempts")

    async def stop(self, nb: Tracked) -> None:
        await self.act(nb, "stop", lambda now: now.state in (S.STOPPING, S.STOPPED))

    async def start(self, nb: Tracked) -> None:
        await self.act(nb, "start", lambda now: now.generation > nb.generation)

    async def watch(self) -> None:
        while True:
            for token in list(self.tokens.values()):
                listed = await self.call(token, "GET", "/v1/notebooks", wire.NotebookList)
                now = time.time()
                for notebook in listed.items if listed is not None else []:
                    self.states[notebook.id] = notebook
                    gone = notebook.generation - (notebook.state == S.QUEUED)
                    for generation in range(1, gone + 1):
                        self.unqueued_by.setdefault((notebook.id, generation), now)
            await asyncio.sleep(0.5)

    def is_(self, nb: Tracked, state: NotebookState) -> bool:
        seen = self.states.get(nb.id)
        return seen is not None and (seen.generation, seen.state) == (nb.generation, state)

    async def reached(self, nb: Tracked, state: NotebookState) -> None:
        what = f"notebook {nb.id} (seq={nb.seq}) to be {state}"
        await eventually(what, lambda: self.is_(nb, state), 60)

    async def settled(self, notebooks: list[Tracked]) -> None:
        """Wait until every notebook is in the state its last command asked for."""
        try:
            what = "every notebook to reach the state its last request asked for"
            await eventually(what, lambda: all(self.is_(nb, nb.wanted) for nb in notebooks), 90)
        except AssertionError as exc:
            wrong = [
                f"seq={nb.seq} {nb.id} wanted {nb.wanted} (generation {nb.generation}); is "
                f"{seen.state} (generation {seen.generation}): {seen.state_reason}"
                for nb in notebooks
                if (seen := self.states.get(nb.id)) and not self.is_(nb, nb.wanted)
            ]
            raise AssertionError(f"{exc}\n" + "\n".join(wrong[:20])) from None

    def close(self) -> None:
        """Threads still waiting on a reply are left to finish; queued requests are dropped."""
        self.executor.shutdown(wait=False, cancel_futures=True)
