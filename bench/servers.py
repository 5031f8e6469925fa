"""Start and stop the servers under test on free loopback ports; read their workers' memory and CPU.

Every server runs in its own session (process group), so stopping it reaches the gunicorn master and its
workers and nothing else. `running_gunicorn` always stops what it started, also on errors and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv_bin(name: str) -> str:
    """An executable of the Python environment running the benchmark (the project's .venv)."""
    candidate = Path(sys.executable).parent / name
    if not candidate.exists():
        raise RuntimeError(f"{candidate} not found: run the benchmark with the project's .venv/bin/python")
    return str(candidate)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces: parse after the last ")"
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)


def memory_kb(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process, in kB."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in {"VmHWM", "VmRSS"}:
                out[name] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used (every core, /proc/stat), for load accounting."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(values) - values[3] - values[4]) / _CLK_TCK


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str  # http://127.0.0.1:PORT
    port: int
    log_path: Path

    def workers(self) -> list[int]:
        return _children(self.process.pid)

    def worker_memory(self) -> list[dict[str, int]]:
        return [{"pid": pid, **memory_kb(pid)} for pid in self.workers()]

    def worker_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.workers())


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError:
        return "(no output)"


def _healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _wait_for_workers(server: Server, expected: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with code {server.process.returncode}; its output:\n"
                f"{_tail(server.log_path)}"
            )
        if len(server.workers()) >= expected and _healthy(server.port):
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"{server.name} did not start within {START_TIMEOUT_S:.0f} s:\n{_tail(server.log_path)}"
    )


def stop(server: Server) -> None:
    """SIGTERM to the process group (master and workers), then SIGKILL if it lingers."""
    process = server.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)
    # a worker that outlived its master (it should not) is still in the group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_gunicorn(
    name: str, command: list[str], *, workers: int, workdir: Path, env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """Run `command` (which must bind to the port it is given through `{port}`) until the block ends."""
    port = free_port()
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [part.replace("{port}", str(port)) for part in command],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    server = Server(name, process, f"http://127.0.0.1:{port}", port, log_path)
    try:
        _wait_for_workers(server, workers)
        yield server
    finally:
        stop(server)


def floor_command(workers: int) -> list[str]:
    """The floor app under gunicorn with the worker settings of `ketamine-cds serve` (cds/cli.py)."""
    return [
        venv_bin("gunicorn"),
        "--worker-class",
        "gthread",
        "--threads",
        "4",
        "--workers",
        str(workers),
        "--timeout",
        "30",
        "--graceful-timeout",
        "10",
        "--bind",
        "127.0.0.1:{port}",
        "bench.floor_app:app",
    ]


def service_command(workers: int) -> list[str]:
    """The production entry point, in development mode (no client authentication, plain-http FHIR)."""
    return [
        venv_bin("ketamine-cds"),
        "serve",
        "--dev",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--workers",
        str(workers),
    ]


def sekmet_pids() -> list[int]:
    """The sekmet server(s) this process started (children whose command line names sekmet)."""
    found = []
    for pid in _children(os.getpid()):
        with contextlib.suppress(OSError):
            if b"sekmet" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found
