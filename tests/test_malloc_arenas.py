"""`ketamine-cds serve` caps glibc's malloc arenas (cds/web/serving.py): checked by counting the arenas
glibc reports after six threads have allocated at once, with and without the cap."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from cds.config import load_settings

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")

PROGRAM = """
import ctypes, sys, threading
from cds.web.serving import limit_malloc_arenas
applied = limit_malloc_arenas(int(sys.argv[1]))
together = threading.Barrier(6)
kept = []
def allocate():
    together.wait()  # all six threads allocate while the others are alive and holding memory
    kept.append([bytearray(50_000) for _ in range(20)])
    together.wait()
threads = [threading.Thread(target=allocate) for _ in range(6)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per arena, on stderr
print(applied)
"""


def _arenas(limit: int) -> tuple[bool, int]:
    finished = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(limit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    arenas = sum(1 for line in finished.stderr.splitlines() if line.startswith("Arena "))
    return finished.stdout.strip() == "True", arenas


def test_the_cap_holds_the_arenas_to_the_setting() -> None:
    assert _arenas(2) == (True, 2)


def test_without_the_cap_each_thread_gets_an_arena() -> None:
    applied, arenas = _arenas(0)
    assert not applied
    assert arenas >= 6  # the main thread's and the six threads' (glibc allows 8 per core)


def test_the_cap_is_on_by_default_and_zero_leaves_the_c_library_default() -> None:
    assert load_settings(environ={}, overrides={"dev_mode": True}).malloc_arena_max == 2
    assert (
        load_settings(
            environ={"KETAMINE_CDS_MALLOC_ARENA_MAX": "0", "KETAMINE_CDS_DEV_MODE": "true"}
        ).malloc_arena_max
        == 0
    )
