"""A loopback TCP listener that counts the connections it receives: proof that a target got none.

    with CountingListener() as listener:
        ...                      # point something at 127.0.0.1:listener.port
        assert listener.connections == 0

Each accepted connection is counted, then answered with a minimal HTTP 500 and closed, so a client that
does get through fails fast instead of waiting for a timeout.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class CountingListener:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._socket = socket.create_server(
            (host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET
        )
        self._socket.settimeout(0.05)
        self.port = int(self._socket.getsockname()[1])
        self._lock = threading.Lock()
        self._count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._count

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._count += 1
            try:
                conn.sendall(b"HTTP/1.0 500 Counted\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            finally:
                conn.close()

    def __enter__(self) -> CountingListener:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()
