"""Fault injection for tests: a TCP proxy that can refuse or hang, a private redis-server, server processes.

    FaultyProxy(port)        127.0.0.1:<proxy.port> forwards to 127.0.0.1:<port>; .refuse() drops every
                             connection and refuses new ones, .hang() keeps connections open but passes
                             no byte either way, .heal() forwards again
    private_redis()          a redis-server of our own on a free port (never the machine's 6379), killed
                             on exit; .kill() / .restart() for outages
    ServerProcess            `ketamine-cds serve` in its own process group, with its log, stopped on exit
    proxied_postgres()       a fresh PostgreSQL schema reached through a FaultyProxy: (url, proxy)

The machine's shared PostgreSQL and Redis are never stopped, paused or flushed: outages are made here.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from tests.support.backends import fresh_postgres_schema, postgres_url_or_skip

KETAMINE_CDS = Path(sys.executable).with_name("ketamine-cds")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FaultyProxy:
    """A loopback TCP proxy whose upstream can be made to refuse or to hang, to play a failing server."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._mode = "forward"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self._listen()

    # -- modes ------------------------------------------------------------------------------------

    def refuse(self) -> None:
        """Connection refused from now on; open connections are reset."""
        with self._lock:
            self._mode = "refuse"
            self._close_listener()
            self._drop_all()

    def hang(self) -> None:
        """Accept connections but pass nothing, on new and open connections alike."""
        with self._lock:
            self._mode = "hang"
            if self._listener is None:
                self._listen_locked()

    def heal(self) -> None:
        with self._lock:
            self._mode = "forward"
            self._drop_all()  # hung connections carry half a conversation: start clean
            if self._listener is None:
                self._listen_locked()

    def close(self) -> None:
        self._stopped.set()
        with self._lock:
            self._close_listener()
            self._drop_all()

    # -- plumbing -----------------------------------------------------------------------------------

    def _listen(self) -> None:
        with self._lock:
            self._listen_locked()

    def _listen_locked(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close alone does not
            self._listener.close()
            self._listener = None

    def _drop_all(self) -> None:
        for a, b in self._pairs:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    sock.close()
        self._pairs.clear()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while not self._stopped.is_set():
                readable, _, _ = select.select(list(peers), [], [], 0.1)
                if self._mode == "hang":
                    continue  # bytes stay in the kernel buffers: the peer waits
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in peers:
                with contextlib.suppress(OSError):
                    sock.close()


class PrivateRedis:
    """A redis-server of the test's own, on its own port, keeping nothing on disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail("redis-server is not installed; CI=true requires it", pytrace=False)
            pytest.skip("redis-server is not installed")
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        command += ["--dir", str(self.directory)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        pytest.fail("the private redis-server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def server_env(**settings: str) -> dict[str, str]:
    """The test process's environment without any KETAMINE_CDS_ setting, plus `settings` (names without
    the prefix, e.g. DATABASE_URL=...)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KETAMINE_CDS_") and k not in {"PROMETHEUS_MULTIPROC_DIR", "TMPDIR"}
    }
    env.update({f"KETAMINE_CDS_{name}": value for name, value in settings.items()})
    env.setdefault("KETAMINE_CDS_LOG_LEVEL", "WARNING")
    return env


class ServerProcess:
    """`ketamine-cds serve --dev` (or any argv) in its own process group, output in `log`."""

    def __init__(
        self,
        directory: Path,
        env: Mapping[str, str],
        *,
        workers: int = 1,
        dev: bool = True,
        wrapper: list[str] | None = None,
        name: str = "server",
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = directory / f"{name}.log"
        command = [str(KETAMINE_CDS), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--workers", str(workers)] + (["--dev"] if dev else [])
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                (wrapper or []) + command,
                env=dict(env),
                cwd=directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        with requests.Session() as session:
            session.trust_env = False
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"the server exited early:\n{self.output()}")
                with contextlib.suppress(requests.RequestException):
                    if session.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                        return
                time.sleep(0.05)
        pytest.fail(f"the server did not become ready:\n{self.output()}")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def proxied_postgres() -> Iterator[tuple[str, FaultyProxy]]:
    """A fresh PostgreSQL schema whose URL goes through a proxy the test can make refuse or hang."""
    base = postgres_url_or_skip()
    port = sa.engine.make_url(base).port or 5432
    proxy = FaultyProxy(port)
    try:
        with fresh_postgres_schema() as url:
            yield url.replace(f"127.0.0.1:{port}", f"127.0.0.1:{proxy.port}", 1), proxy
    finally:
        proxy.close()
