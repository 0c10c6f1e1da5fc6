"""Shared test fixtures.

``site`` gives tests a strict, current HTML build of the book and a headless Chromium to look at
it with (see tests/test_site.py). Unit tests of physgrad do not use it, so `python -m pytest
tests/test_problem.py` stays fast.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
# Optional copy of an earlier build (`cp -r _build/html _build/html-before` before a change):
# tests/test_site.py then also takes "before-*" screenshots of it for comparison.
HTML_BEFORE = ROOT / "_build" / "html-before"
# Written by _ext/strict_build.py after a build with zero warnings (removed after a failed one).
STAMP = HTML / ".strict-build-ok"
# The strict build, identical to the README / .ci/run command, run by this interpreter's
# jupyter-book (jupyter_book has no __main__, so call its click entry point).
BUILD_CMD = [
    sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
    "build", ".", "--all", "-W", "-n", "--keep-going",
]
# Everything the book is built from: a newer file than the stamp means the build is stale.
SOURCES = ["_config.yml", "_toc.yml", "references.bib", "index.md", "chapters", "notebooks",
           "physgrad", "vendor", "assets", "_ext"]

# Headless Chromium with the network effectively off: pages are file:// URLs, background
# services are disabled, and any request that would leave the machine goes to a dead proxy.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--hide-scrollbars", "--mute-audio",
    "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
]


def _newest_source_mtime() -> float:
    newest = 0.0
    for name in SOURCES:
        p = ROOT / name
        if p.is_file():
            newest = max(newest, p.stat().st_mtime)
        elif p.is_dir():
            for f in p.rglob("*"):
                if f.is_file() and "__pycache__" not in f.parts and ".ipynb_checkpoints" not in f.parts:
                    newest = max(newest, f.stat().st_mtime)
    return newest


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Site:
    """The built book plus a headless browser: ``render(page)`` and ``screenshot(page, name)``.

    ``page`` is a path relative to _build/html, e.g. ``"chapters/01-overview.html"``.
    """

    def __init__(self, chromium: str):
        self.chromium = chromium
        self.html = HTML

    def url(self, page: str) -> str:
        path = self.html / page
        assert path.is_file(), f"page {page} is not in the built site ({path})"
        return path.as_uri()

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            cmd = [self.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def render(self, page: str, budget_ms: int = 15000) -> str:
        """The DOM of ``page`` after its scripts ran (MathJax, widgets), as HTML text."""
        proc = self._run([f"--virtual-time-budget={budget_ms}", "--dump-dom", self.url(page)])
        assert proc.returncode == 0 and proc.stdout.strip(), (
            f"chromium failed on {page} (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.stdout

    def screenshot(self, page: str, name: str, size: str = "1280,2600",
                   budget_ms: int = 15000) -> Path:
        """Save a PNG of ``page`` to _build/screenshots/<name>.png and return its path."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        out = SCREENSHOTS / f"{name}.png"
        if out.exists():
            out.unlink()
        proc = self._run([f"--virtual-time-budget={budget_ms}", f"--window-size={size}",
                          f"--screenshot={out}", self.url(page)])
        assert proc.returncode == 0 and out.is_file() and out.stat().st_size > 0, (
            f"no screenshot of {page} (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
        return out


def _problems(log: str, limit: int = 40) -> str:
    """The warning/error lines of a build log, without colour codes."""
    log = re.sub(r"\x1b\[[0-9;]*m", "", log)
    lines = [ln for ln in log.splitlines() if re.search(r"WARNING|ERROR|Error|Traceback", ln)
             and "Kernel is running over TCP" not in ln]
    return "\n".join(lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else []))


def ensure_built() -> None:
    """Build the book strictly unless a clean build newer than every source exists."""
    if STAMP.is_file() and STAMP.stat().st_mtime >= _newest_source_mtime():
        return
    t0 = time.time()
    proc = subprocess.run(BUILD_CMD, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not STAMP.is_file():
        pytest.fail(
            f"strict book build failed (exit {proc.returncode}); run `jupyter-book build .` for "
            f"the full log. Warnings and errors:\n{_problems(proc.stdout + proc.stderr)}",
            pytrace=False)
    print(f"built the book in {time.time() - t0:.0f} s")


@pytest.fixture(scope="session")
def site() -> Site:
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI is set but no chromium is installed: `apt-get install -y chromium` "
                        "(.ci/run does this when run as root)")
        pytest.skip("chromium not found: install it (`apt-get install -y chromium`) to run the "
                    "browser checks of the built site")
    ensure_built()
    return Site(chromium)


@pytest.fixture
def one_thread():
    """Tiny networks run faster on one thread and do not oversubscribe shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
