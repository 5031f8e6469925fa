"""Headless Chromium for tests of the service's HTML pages (Debian's `chromium`, installed on first use).

    chromium = ensure_chromium()          # /usr/bin/chromium, apt-get installing it when missing
    dom = dump_dom(chromium, page_url)    # the DOM after the page rendered
    screenshot(chromium, page_url, png)   # a PNG of the rendered page
    print_pdf(chromium, page_url, pdf)    # the page printed to PDF (print styles applied)

No browser is downloaded by a test tool; the flags keep Chromium off the network (this machine's network is
closed) and out of the user's profile.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
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
