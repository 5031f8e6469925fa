"""Random (version 4) UUIDs for cards and suggestions, from the OS's random source in batches.

On some virtual machines each `os.urandom` call costs a fifth of a millisecond; a response needs several
uuids, so they are cut from one read of 64 at a time. Same randomness, fewer system calls.
"""

from __future__ import annotations

import os
import threading
import uuid

_BATCH = 64


class UuidSource:
    def __init__(self) -> None:
        self._buffer = b""
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __call__(self) -> str:
        with self._lock:
            if self._pid != os.getpid():  # never share random bytes with a forked sibling
                self._buffer, self._pid = b"", os.getpid()
            if not self._buffer:
                self._buffer = os.urandom(16 * _BATCH)
            raw, self._buffer = self._buffer[:16], self._buffer[16:]
        return str(uuid.UUID(bytes=raw, version=4))


new_uuid = UuidSource()
