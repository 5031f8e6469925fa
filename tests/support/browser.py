"""Headless Chromium for tests of the service's HTML pages (Debian's `chromium`, installed on first use).

    chromium = ensure_chromium()          # /usr/bin/chromium, apt-get installing it when missing
    dom = dump_dom(chromium, page_url)    # the DOM after the page rendered
    screenshot(chromium, page_url, png)   # a PNG of the rendered page
    print_pdf(chromium, page_url, pdf)    # the page printed to PDF (print styles applied)
    axe_violations(chromium, html, tmp)   # WCAG 2.1 A/AA violations found by axe-core (npm, installed once)

No browser is downloaded by a test tool; the flags keep Chromium off the network (this machine's network is
closed) and out of the user's profile.
"""

from __future__ import annotations

import fcntl
import html as html_text
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
NPM_PROJECT = Path(__file__).resolve().parents[1] / "browser"  # axe-core pinned by package-lock.json
AXE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "axe-core"
AXE_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa")
_LOCK = Path(tempfile.gettempdir()) / "ketamine-cds-chromium-install.lock"
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def ensure_chromium() -> Path:
    """Debian's chromium, installed with apt-get (once, under a lock) when it is not there yet."""
    if CHROMIUM.exists():
        return CHROMIUM
    with open(_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not CHROMIUM.exists():
            apt = shutil.which("apt-get")
            if apt is None:
                raise RuntimeError("chromium is missing and apt-get is not available to install it")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for command in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "chromium"]):
                result = subprocess.run(
                    command, capture_output=True, text=True, env=env, timeout=900, check=False
                )
                if result.returncode != 0:
                    raise RuntimeError(
                        f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-2000:]}"
                    )
    return CHROMIUM


def _run(chromium: Path, *args: str, timeout: float = 60) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        result = subprocess.run(
            [str(chromium), *_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited with {result.returncode}:\n{result.stderr[-2000:]}")
    return result.stdout


def dump_dom(chromium: Path, url: str) -> str:
    return _run(chromium, "--dump-dom", url)


def screenshot(chromium: Path, url: str, output: Path, width: int = 1100, height: int = 1400) -> Path:
    _run(chromium, f"--screenshot={output}", f"--window-size={width},{height}", url)
    return output


def print_pdf(chromium: Path, url: str, output: Path) -> Path:
    _run(chromium, f"--print-to-pdf={output}", "--no-pdf-header-footer", url)
    return output


def ensure_axe() -> Path:
    """axe-core's browser bundle, installed once into .cache/ with `npm ci` from the committed lock file
    (tests/browser/package.json and package-lock.json), under a lock."""
    script = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
    if script.exists():
        return script
    AXE_DIR.mkdir(parents=True, exist_ok=True)
    with open(AXE_DIR / "install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not script.exists():
            npm = shutil.which("npm")
            if npm is None:
                raise RuntimeError("npm is needed to install axe-core for the accessibility check")
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(NPM_PROJECT / name, AXE_DIR / name)
            command = [npm, "ci", "--prefix", str(AXE_DIR), "--no-audit", "--no-fund"]
            result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
            if result.returncode != 0 or not script.exists():
                raise RuntimeError(f"npm ci (axe-core) failed:\n{(result.stdout + result.stderr)[-2000:]}")
    return script


def axe_violations(chromium: Path, html: str, workdir: Path) -> list[dict[str, object]]:
    """Run axe-core (WCAG 2.1 A and AA rules) on `html` in headless Chromium; its violations.

    axe is injected inline into a copy of the page and writes its result into the DOM, which Chromium
    dumps once the page's (virtual) time has run: no driver and no network needed.
    """
    tags = json.dumps(list(AXE_TAGS))
    runner = (
        f"<script>{ensure_axe().read_text(encoding='utf-8')}</script><script>"
        f"axe.run(document, {{runOnly: {{type: 'tag', values: {tags}}}}}).then(function (r) {{"
        "var out = document.createElement('pre'); out.id = 'axe-result';"
        "out.textContent = JSON.stringify(r.violations.map(function (v) {"
        "return {id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length}; }));"
        "document.body.appendChild(out); });</script>"
    )
    page = workdir / "axe-page.html"
    page.write_text(html.replace("</body>", runner + "</body>"), encoding="utf-8")
    dom = _run(chromium, "--virtual-time-budget=15000", "--dump-dom", page.as_uri())
    found = re.search(r'<pre id="axe-result">(.*?)</pre>', dom, re.DOTALL)
    if found is None:
        raise RuntimeError("axe-core did not report (the page's scripts did not run)")
    violations: list[dict[str, object]] = json.loads(html_text.unescape(found.group(1)))
    return violations
