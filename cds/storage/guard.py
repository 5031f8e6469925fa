"""A time limit and a circuit breaker for storage calls made while a caller waits.

libpq bounds connecting and the server bounds statements, but a database that has stopped answering on an
open connection (a frozen server, a stalled proxy) blocks a query until the network gives up, which can be
minutes. Calls on the request path therefore run on a small pool of helper threads and the caller waits at
most `wait_s`; after a failure the breaker stays open for `wait_s`, so the next calls fail at once instead
of queueing behind a dead connection. The caller turns `StorageUnavailable` into its own answer (show the
card, keep the feedback locally, 503).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import sqlalchemy as sa

from cds.errors import ServiceUnavailable

__all__ = ["Guard", "StorageUnavailable"]

T = TypeVar("T")

# What a database that is down or unreachable raises; anything else is a bug and propagates as such.
# (Redis calls are not guarded: the Redis backends bound and catch their own failures.)
_OUTAGE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError, OSError)


class StorageUnavailable(ServiceUnavailable):
    """A storage dependency did not answer within its time limit, or is known to be down."""


class Guard:
    """Runs storage calls for one dependency with a time limit and a breaker. One per dependency and app."""

    def __init__(self, name: str, wait_s: float, *, threads: int = 4) -> None:
        self.name = name
        self._wait_s = wait_s
        self._threads = threads
        self._open_until = 0.0
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._pid: int | None = None
        self.failures = 0

    @property
    def is_open(self) -> bool:
        """True while recent failures make us skip the dependency."""
        return time.monotonic() < self._open_until

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()` within the time limit; StorageUnavailable when it fails, times out, or the breaker is
        open."""
        if self.is_open:
            raise StorageUnavailable(f"{self.name} unavailable")
        future: Future[T] = Future()
        self._ensure_threads()
        self._jobs.put((fn, future))
        try:
            return future.result(timeout=self._wait_s)
        except FutureTimeout:
            future.cancel()  # if it has not started, it never will; if it has, it finishes on its own
            self._trip()
            raise StorageUnavailable(f"{self.name} did not answer within {self._wait_s:g} s") from None
        except _OUTAGE as exc:
            self._trip()
            raise StorageUnavailable(f"{self.name} unavailable: {type(exc).__name__}") from None

    def _trip(self) -> None:
        self.failures += 1
        self._open_until = time.monotonic() + self._wait_s

    def _ensure_threads(self) -> None:
        """Daemon threads (a thread stuck on a dead connection must not hold up the process's exit), started
        in each process that uses the guard: a forked worker does not inherit its parent's threads."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._jobs = queue.SimpleQueue()
                for n in range(self._threads):
                    threading.Thread(target=self._work, name=f"cds-{self.name}-{n}", daemon=True).start()
                self._pid = os.getpid()

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            fn, future = jobs.get()
            if not future.set_running_or_notify_cancel():
                continue  # the caller gave up before we started
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting caller
                future.set_exception(exc)
