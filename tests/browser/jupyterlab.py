"""Driving JupyterLab 4 through its real UI, as a person would, with waits on what the page
shows (never fixed sleeps).

Selectors are JupyterLab 4's own classes and ARIA roles; the image pins the version
(scripts/build-images), so a JupyterLab upgrade that moves them fails here first.
"""

from __future__ import annotations

import re

from playwright.sync_api import Locator, Page, expect

#: Starting a kernel in a fresh container on a busy 2-core machine can take a while.
KERNEL_TIMEOUT_MS = 120_000
DIRTY = re.compile(r"\bjp-mod-dirty\b")


class JupyterLab:
    def __init__(self, page: Page) -> None:
        self.page = page

    def open(self, url: str) -> None:
        """Load ``url`` and wait until the application shell (menu bar, file browser) is up."""
        self.page.goto(url)
        expect(self.page.locator("#jp-top-panel .lm-MenuBar")).to_be_visible()
        expect(self.page.locator(".jp-FileBrowser .jp-DirListing")).to_be_visible()

    # ------------------------------------------------------------------ notebooks

    def new_python_notebook(self) -> Locator:
        """Launcher → "Python 3 (ipykernel)" notebook card; returns the new notebook's panel
        once its kernel is idle. A restored layout may hide the launcher: the file browser's
        "+" opens a new one."""
        launcher = self.page.locator(".jp-Launcher:visible")
        if not launcher.count():
            self.page.locator('.jp-FileBrowser [data-command="launcher:create"]').click()
        card = self.page.locator('.jp-Launcher:visible .jp-LauncherCard[data-category="Notebook"]')
        expect(card.first).to_have_attribute("title", re.compile("Python 3"))
        card.first.click()
        return self.current_notebook()

    def current_notebook(self) -> Locator:
        panel = self.page.locator(".jp-NotebookPanel:visible")
        expect(panel).to_have_count(1)
        self.wait_kernel_idle(panel)
        return panel

    def wait_kernel_idle(self, panel: Locator) -> None:
        """Until the status bar says the notebook's kernel is connected and idle. A cell run
        before that is silently dropped; the toolbar's execution indicator is no signal, it
        starts out "idle" before any kernel exists."""
        expect(panel).to_be_visible()
        status = self.page.locator("#jp-main-statusbar").get_by_title(
            re.compile("^Change kernel for")
        )
        expect(status).to_have_text(re.compile(r"\| Idle$"), timeout=KERNEL_TIMEOUT_MS)

    def run_in_first_cell(self, panel: Locator, code: str) -> Locator:
        """Types ``code`` into the first cell, Shift+Enter, and returns the cell's output
        area (the caller waits for what it should show)."""
        cell = panel.locator(".jp-Cell").first
        cell.locator(".cm-content").click()
        self.page.keyboard.type(code)
        expect(cell.locator(".cm-content")).to_have_text(code)
        self.page.keyboard.press("Shift+Enter")
        return cell.locator(".jp-OutputArea-output")

    def run_in_last_cell(self, panel: Locator, code: str) -> Locator:
        """Types ``code`` into the notebook's last cell (the empty one a Shift+Enter on the
        last cell added), Shift+Enter, and returns that cell's output area (by position: the
        Shift+Enter adds another cell after it)."""
        cells = panel.locator(".jp-Cell")
        cell = cells.nth(cells.count() - 1)
        cell.locator(".cm-content").click()
        self.page.keyboard.type(code)
        expect(cell.locator(".cm-content")).to_have_text(code)
        self.page.keyboard.press("Shift+Enter")
        return cell.locator(".jp-OutputArea-output")

    def save(self, name: str) -> None:
        """Ctrl+S on the named notebook ``name``; returns once its tab is no longer dirty (the
        contents API answered)."""
        self.page.keyboard.press("Control+s")
        tab = self.current_tab(name)
        expect(tab).to_be_visible()
        expect(tab).not_to_have_class(DIRTY)

    def save_new_notebook_as(self, name: str) -> None:
        """Ctrl+S on an untitled notebook: JupyterLab 4 asks for a name on first save."""
        self.page.keyboard.press("Control+s")
        dialog = self.page.get_by_role("dialog").filter(has_text="Rename file")
        dialog.get_by_role("textbox").fill(name)
        dialog.get_by_role("button", name="Rename and Save").click()
        tab = self.current_tab(name)
        expect(tab).to_be_visible()
        expect(tab).not_to_have_class(DIRTY)

    def current_tab(self, name: str) -> Locator:
        return self.page.locator(
            ".lm-DockPanel-tabBar .lm-TabBar-tab.jp-mod-current", has_text=name
        )

    # ------------------------------------------------------------------ files

    def file_entry(self, name: str) -> Locator:
        listing = self.page.locator(".jp-FileBrowser .jp-DirListing-content")
        return listing.locator(
            ".jp-DirListing-itemText", has_text=re.compile(f"^{re.escape(name)}$")
        )

    def open_file(self, name: str) -> Locator:
        """Double-click ``name`` in the file browser; returns the notebook panel it opens."""
        entry = self.file_entry(name)
        expect(entry).to_be_visible()
        entry.dblclick()
        tab = self.current_tab(name)
        expect(tab).to_be_visible()
        return self.current_notebook()
