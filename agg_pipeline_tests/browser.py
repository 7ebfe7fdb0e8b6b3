"""Debian's Chromium driven by Playwright, and screenshots a CI run keeps.

Playwright's own browser downloads are not used: the test drives the system Chromium
(`apt-get install chromium`), found at AGG_CHROMIUM or /usr/bin/chromium. Without it the
browser tests skip, unless AGG_BROWSER_REQUIRED=1 (CI) turns that into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM_VAR = "AGG_CHROMIUM"
REQUIRED_VAR = "AGG_BROWSER_REQUIRED"
# Without the background-networking flags Chromium keeps dialling Google services, which a
# closed network refuses; headless, no sandbox (root in CI containers), no GPU.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1400, "height": 900}
# Screenshots are copied here too (git-ignored), where CI collects artifacts.
REPO_OUTPUT = Path(__file__).resolve().parents[1] / "test-output" / "browser"


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRED_VAR, "").strip() not in ("", "0"):
        pytest.fail(f"{reason} ({REQUIRED_VAR} is set: the browser test must run)")
    pytest.skip(reason)


def chromium_executable() -> str:
    """The system Chromium, or skip (fail when AGG_BROWSER_REQUIRED is set)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    configured = os.environ.get(CHROMIUM_VAR, "").strip()
    candidates = [configured] if configured else ["/usr/bin/chromium",
                                                  shutil.which("chromium") or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    _unavailable(f"no Chromium at {configured or '/usr/bin/chromium'}: "
                 "apt-get install chromium (or set AGG_CHROMIUM)")
    raise AssertionError("unreachable")


def launch(playwright, executable: str):
    return playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))


class Screenshots:
    """Numbered screenshots in `folder` (the test's tmp_path), each copied to REPO_OUTPUT."""

    def __init__(self, folder: Path, copy_to: Path = REPO_OUTPUT) -> None:
        self.folder = folder
        self.copy_to = copy_to
        self.saved: list[Path] = []
        folder.mkdir(parents=True, exist_ok=True)
        if copy_to.exists():
            shutil.rmtree(copy_to)  # only this run's pictures, not a previous run's
        copy_to.mkdir(parents=True, exist_ok=True)

    def take(self, page, name: str, *, full_page: bool = False) -> Path:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        path = self.folder / f"{len(self.saved) + 1:02d}-{slug}.png"
        page.screenshot(path=str(path), full_page=full_page)
        self.saved.append(path)
        copy = self.copy_to / path.name
        shutil.copyfile(path, copy)
        print(f"screenshot: {path}  (copy: {copy})")
        return path

    def keep(self, source: Path, name: str) -> None:
        """Copy another file (e.g. the server log) next to the screenshots."""
        if source.is_file():
            shutil.copyfile(source, self.folder / name)
            shutil.copyfile(source, self.copy_to / name)
