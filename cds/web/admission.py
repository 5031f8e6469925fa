"""A worker-wide cap on the request bodies being screened at once, by their size.

Why: a decoded chart takes several times its JSON size in memory (about 18 MB for a 4 MB body of 5,000
resources). With four threads a worker could hold four such charts at once and double its memory, while
the GIL lets only one of them use the CPU at a time, so running them together bought no throughput.
Large bodies therefore take turns: a body is admitted while the bodies in flight plus its own size stay
within the budget; one larger than the whole budget is admitted alone. Bodies under `UNCOUNTED_BYTES`
(an ordinary chart) never wait. A body that cannot be admitted within the wait limit gets a 503 with
Retry-After rather than holding the caller past its own timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cds.errors import ServiceUnavailable

UNCOUNTED_BYTES = 1024 * 1024


class BodyBudget:
    def __init__(self, limit_bytes: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.limit_bytes = limit_bytes
        self._monotonic = monotonic
        self._in_flight = 0
        self._changed = threading.Condition()

    @property
    def in_flight(self) -> int:
        with self._changed:
            return self._in_flight

    def admit(self, size: int | None, wait_s: float) -> int:
        """Wait until a body of `size` bytes (None: not declared, counted as the whole budget) may be
        read; returns the weight to hand back to `release`. Raises ServiceUnavailable after `wait_s`."""
        if size is not None and size < UNCOUNTED_BYTES:
            return 0
        weight = self.limit_bytes if size is None else min(size, self.limit_bytes)
        deadline = self._monotonic() + wait_s
        with self._changed:
            while self._in_flight and self._in_flight + weight > self.limit_bytes:
                remaining = deadline - self._monotonic()
                if remaining <= 0:
                    raise ServiceUnavailable("the service is busy with other large requests; send it again")
                self._changed.wait(remaining)
            self._in_flight += weight
        return weight

    def release(self, weight: int) -> None:
        if not weight:
            return
        with self._changed:
            self._in_flight -= weight
            self._changed.notify_all()
