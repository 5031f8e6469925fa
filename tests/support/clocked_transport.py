"""A fake monotonic clock and a requests transport that spends its time: deadlines tested without waiting.

    clock = FakeMonotonic()
    transport = ClockedTransport(clock, lambda url: Timed(body=b"{}", delay_s=3))
    session = requests.Session(); session.mount("https://fhir.test/", transport)
    FhirClient("https://fhir.test/r4", session=session, ..., deadline=clock() + 0.5, monotonic=clock)

The transport "sleeps" by advancing the clock: `delay_s` before the headers, `drip_s` before each
`drip_piece` bytes of the body. A wait longer than the read timeout the client passed advances the clock
by that timeout and raises a read timeout, as a socket would (`requests.ReadTimeout` before the headers,
urllib3's `ReadTimeoutError` while the body streams). Nothing touches the network or the
real clock, so a test can assert what happened at each instant instead of how long the run took.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3.exceptions
from requests.adapters import BaseAdapter


class FakeMonotonic:
    """Seconds that move only when told to; callable like `time.monotonic`."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "a monotonic clock never goes back"
        self.now += seconds


@dataclass(frozen=True)
class Timed:
    """One answer of the fake transport and the time it takes."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the status line
    drip_s: float = 0.0  # before each piece of the body
    drip_piece: int = 16


@dataclass(frozen=True)
class Sent:
    url: str
    timeout: tuple[float, float]  # (connect, read), as the client passed them
    at: float  # the clock when the request was sent


class _DrippingBody:
    """A raw body for `requests.Response`: each read returns one piece, after the clock moved on."""

    def __init__(self, clock: FakeMonotonic, reply: Timed, read_timeout: float) -> None:
        self._clock = clock
        self._reply = reply
        self._read_timeout = read_timeout
        self._offset = 0
        self.pieces_read = 0

    def read(self, amt: int | None = None, **_kwargs: Any) -> bytes:
        if self._offset >= len(self._reply.body):
            return b""
        if self._reply.drip_s > self._read_timeout:
            self._clock.advance(self._read_timeout)
            raise urllib3.exceptions.ReadTimeoutError(None, "", "Read timed out.")  # as a stalled socket
        self._clock.advance(self._reply.drip_s)
        size = self._reply.drip_piece if self._reply.drip_s else len(self._reply.body)
        size = min(size, amt) if amt else size
        piece = self._reply.body[self._offset : self._offset + size]
        self._offset += len(piece)
        self.pieces_read += 1
        return piece

    def close(self) -> None:
        return None


class ClockedTransport(BaseAdapter):
    """Answers every request from `script(url)`, spending the answer's time on `clock`."""

    def __init__(self, clock: FakeMonotonic, script: Callable[[str], Timed]) -> None:
        super().__init__()
        self.clock = clock
        self.script = script
        self.sent: list[Sent] = []
        self.bodies: list[_DrippingBody] = []

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None, **_kwargs: Any
    ) -> requests.Response:
        url = str(request.url)
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self.sent.append(Sent(url, (connect, read), self.clock()))
        reply = self.script(url)
        if reply.delay_s > read:
            self.clock.advance(read)
            raise requests.ReadTimeout("read timed out", request=request)
        self.clock.advance(reply.delay_s)
        body = _DrippingBody(self.clock, reply, read)
        self.bodies.append(body)
        response = requests.Response()
        response.status_code = reply.status
        response.headers.update({"Content-Type": "application/fhir+json", **reply.headers})
        response.raw = body
        response.url = url
        response.request = request
        return response

    def close(self) -> None:
        return None
