"""One test's browser pages, with what a failure report needs from them.

``BrowserSession.new_page()`` opens a page in a fresh browser context (its own cookies, as a
different person or a private window would have) with generous timeouts for a 2-core machine,
and records its console messages and page errors. ``save_artifacts()`` writes, for every page
still open, a screenshot, the page's URL with its console log, and its HTML, and returns the
paths so the failure output can name them.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Page, expect

#: Default wait for any action or expectation; loading JupyterLab's bundle or starting a kernel
#: on a loaded 2-core machine takes tens of seconds.
ACTION_TIMEOUT_MS = 60_000
NAVIGATION_TIMEOUT_MS = 90_000
# expect() has its own default (5 s), separate from the contexts'.
expect.set_options(timeout=ACTION_TIMEOUT_MS)


class BrowserSession:
    def __init__(self, browser: Browser, name: str, artifacts: Path) -> None:
        self.browser = browser
        self.name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
        self.artifacts = artifacts
        self._contexts: list[BrowserContext] = []
        self._logs: dict[int, list[str]] = {}
        self._started = time.monotonic()
        for old in artifacts.glob(f"{self.name}*"):
            old.unlink()

    def new_page(self) -> Page:
        context = self.browser.new_context(viewport={"width": 1440, "height": 900})
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
        self._contexts.append(context)
        page = context.new_page()
        log = self._logs.setdefault(id(page), [])
        page.on("console", lambda m: log.append(f"{self._at()} console.{m.type}: {m.text}"))
        page.on("pageerror", lambda e: log.append(f"{self._at()} pageerror: {e}"))
        page.on(
            "requestfailed",
            lambda r: log.append(f"{self._at()} requestfailed: {r.method} {r.url} {r.failure}"),
        )
        page.on(
            "framenavigated",
            lambda f: log.append(f"{self._at()} navigated: {f.url}") if f == page.main_frame else 0,
        )
        return page

    def _at(self) -> str:
        return f"+{time.monotonic() - self._started:7.2f}s"

    def pages(self) -> list[Page]:
        return [p for c in self._contexts for p in c.pages if not p.is_closed()]

    def save_artifacts(self) -> list[Path]:
        saved: list[Path] = []
        for index, page in enumerate(self.pages(), start=1):
            stem = self.name if index == 1 else f"{self.name}-page{index}"
            shot = self.artifacts / f"{stem}.png"
            text = self.artifacts / f"{stem}.log"
            html = self.artifacts / f"{stem}.html"
            try:
                page.screenshot(path=shot, full_page=True, timeout=15_000)
                saved.append(shot)
            except Exception as exc:  # a crashed page still has its log worth keeping
                self._logs.setdefault(id(page), []).append(f"screenshot failed: {exc}")
            try:
                html.write_text(page.content())
                saved.append(html)
            except Exception:
                pass
            lines = self._logs.get(id(page), [])
            text.write_text(f"url: {page.url}\n\n" + "\n".join(lines) + "\n")
            saved.append(text)
        return saved

    def close(self) -> None:
        for context in self._contexts:
            try:
                context.close()
            except Exception:
                pass
        self._contexts.clear()
