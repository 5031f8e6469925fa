"""A real FHIR R4 server for integration tests: `sekmet-fhir` from PyPI, loaded with the nine test patients.

    with running_fhir_server() as server:
        server.base_url   # "http://127.0.0.1:<port>/fhir"
        server.token      # the static bearer token the server accepts (generated per run)

sekmet's dependency pins differ from ours, so it lives in its own virtual environment under
`<repo>/.cache/sekmet-venv`, built once and reused (a marker file is written only after a successful
install, so a half-built environment is thrown away and rebuilt). Each server gets a free port, a fresh
SQLite database in a temporary directory, and is stopped on exit.

Loading the patients through the API (strict validation of every resource) takes about ten seconds, so
the database right after a load is kept in `<repo>/.cache/sekmet-data/`, keyed by the sekmet version and
the bytes of the bundles loaded: the next server with the same patients starts from a copy of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

SEKMET_REQUIREMENT = "sekmet-fhir==0.1.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_DIR = REPO_ROOT / ".cache" / "sekmet-venv"
LOADED_DIR = REPO_ROOT / ".cache" / "sekmet-data"
DATA_DIR = REPO_ROOT / "tests" / "data" / "fhir-test-data"
_MARKER = ".ketamine-cds-ready"
START_TIMEOUT_S = 60.0
INSTALL_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class FhirServerHandle:
    base_url: str
    token: str
    timings: dict[str, float] = field(default_factory=dict, compare=False)  # seconds, for reports


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_sekmet_venv(venv: Path = VENV_DIR) -> Path:
    """Path to the `sekmet` executable, building the virtual environment first when needed."""
    executable = venv / "bin" / "sekmet"
    marker = venv / _MARKER
    if _ready(marker, executable):
        return executable
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:  # parallel test runs build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ready(marker, executable):
            return executable
        shutil.rmtree(venv, ignore_errors=True)  # a half-built environment from an interrupted run
        _run([sys.executable, "-m", "venv", str(venv)], "create the sekmet virtual environment")
        _run(
            [str(_venv_python(venv)), "-m", "pip", "install", "--quiet", SEKMET_REQUIREMENT],
            f"pip install {SEKMET_REQUIREMENT}",
        )
        _run([str(executable), "--help"], "run the freshly installed sekmet")
        marker.write_text(SEKMET_REQUIREMENT + "\n", encoding="utf-8")
    return executable


def _ready(marker: Path, executable: Path) -> bool:
    try:
        return marker.read_text(encoding="utf-8").strip() == SEKMET_REQUIREMENT and executable.exists()
    except OSError:
        return False


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise RuntimeError(f"could not {what} (exit {result.returncode}):\n{tail}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError:
        return "(no output)"


def _wait_until_up(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"sekmet exited with code {process.returncode} before answering; "
                f"its output:\n{_tail(log_path)}"
            )
        try:
            if requests.get(f"{base_url}/metadata", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(
        f"sekmet did not answer within {START_TIMEOUT_S:.0f} s; its output:\n{_tail(log_path)}"
    )


def patient_bundles(stems: tuple[str, ...] | None = None) -> list[Path]:
    """The bundles in load order: every `*.trimmed.json`, then every `*.medicationstatements.json`.

    `stems` (file name prefixes such as "Yvone_Emmerich") limits them to those patients.
    """
    trimmed = sorted(DATA_DIR.glob("*.trimmed.json"))
    statements = sorted(DATA_DIR.glob("*.medicationstatements.json"))
    if len(trimmed) != 9 or len(statements) != 9:
        raise RuntimeError(
            f"expected 9 + 9 test bundles in {DATA_DIR}, found {len(trimmed)} + {len(statements)}"
        )
    chosen = trimmed + statements
    if stems is not None:
        chosen = [path for path in chosen if path.name.startswith(stems)]
        if len(chosen) != 2 * len(stems):
            raise RuntimeError(f"not every patient of {stems} has its two bundles in {DATA_DIR}")
    return chosen


def load_test_patients(base_url: str, token: str, stems: tuple[str, ...] | None = None) -> None:
    """POST each transaction bundle to the base URL; fail loudly if any entry was not stored."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/fhir+json",
        "Accept": "application/fhir+json",
    }
    with requests.Session() as session:
        for path in patient_bundles(stems):
            response = session.post(base_url, data=path.read_bytes(), headers=headers, timeout=120)
            if response.status_code != 200:
                raise RuntimeError(
                    f"loading {path.name} failed: HTTP {response.status_code}: {response.text[:2000]}"
                )
            statuses = [
                entry.get("response", {}).get("status", "") for entry in response.json().get("entry", [])
            ]
            bad = [status for status in statuses if not status.startswith("20")]
            if bad:
                raise RuntimeError(f"loading {path.name}: {len(bad)} entries not stored, e.g. {bad[:3]}")


def _loaded_copy(stems: tuple[str, ...] | None) -> Path:
    """Where the database holding exactly these patients is kept (it may not exist yet)."""
    digest = hashlib.sha256(SEKMET_REQUIREMENT.encode())
    for path in patient_bundles(stems):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return LOADED_DIR / f"patients-{digest.hexdigest()[:20]}.db"


def _keep_loaded(database: Path, copy: Path) -> None:
    """A consistent copy of the live database (SQLite's backup API; the server keeps running)."""
    copy.parent.mkdir(parents=True, exist_ok=True)
    partial = copy.with_suffix(f".{os.getpid()}.partial")
    with (
        contextlib.closing(sqlite3.connect(database)) as source,
        contextlib.closing(sqlite3.connect(partial)) as target,
    ):
        source.backup(target)
    os.replace(partial, copy)  # atomic: a concurrent run sees the old file or the whole new one


@contextlib.contextmanager
def running_fhir_server(
    *,
    load_patients: bool = True,
    open_access: bool = False,
    stems: tuple[str, ...] | None = None,
    smart_clients: list[dict[str, object]] | None = None,
) -> Iterator[FhirServerHandle]:
    """Start sekmet on a free loopback port with the nine test patients; stop it on exit.

    `open_access`: the server answers without a token (as open test servers and EHR simulators do); the
    handle's token is then accepted but never needed. `stems`: load only these patients.
    `smart_clients` (sekmet's `server_auth.smart_clients` entries: client_id, jwks, scopes) also turns on
    SMART Backend Services: the token endpoint is announced at `<base>/.well-known/smart-configuration`.
    """
    timings: dict[str, float] = {}
    auth_types = ["none"] if open_access else ["bearer", "smart"] if smart_clients else ["bearer"]
    started = time.monotonic()
    executable = ensure_sekmet_venv()
    timings["venv_s"] = time.monotonic() - started

    workdir = Path(tempfile.mkdtemp(prefix="sekmet-"))
    loaded = _loaded_copy(stems) if load_patients else None
    preloaded = False
    token = secrets.token_urlsafe(32)
    log_path = workdir / "sekmet.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(3):  # the free port can be taken between probing and binding
            port = _free_port()
            base_url = f"http://127.0.0.1:{port}/fhir"
            config = {
                "base_url": base_url,
                "host": "127.0.0.1",
                "port": port,
                "db_path": str(workdir / f"sekmet-{attempt}.db"),
                "data_dir": str(workdir / "data"),
                "own_private_key_path": str(workdir / "keys" / "sekmet_private.pem"),
                "server_auth": {
                    "types": auth_types,
                    "tokens": [token],
                    "smart_clients": smart_clients or [],
                },
                "simulator": {"enabled": False},
                "validation": {"inbound": "strict"},
                "log_inbound": False,
            }
            if loaded is not None and loaded.exists():
                shutil.copyfile(loaded, str(config["db_path"]))
                preloaded = True
            config_path = workdir / "sekmet.yaml"
            config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")  # JSON is YAML
            started = time.monotonic()
            with open(log_path, "wb") as log_file:
                process = subprocess.Popen(
                    [str(executable), "serve", "-c", str(config_path)],
                    cwd=workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            try:
                _wait_until_up(process, base_url, log_path)
                break
            except RuntimeError:
                if process.poll() is None or attempt == 2 or "address already in use" not in _tail(log_path):
                    raise
        timings["start_s"] = time.monotonic() - started
        if loaded is not None and not preloaded:
            started = time.monotonic()
            load_test_patients(base_url, token, stems)
            timings["load_s"] = time.monotonic() - started
            _keep_loaded(Path(str(config["db_path"])), loaded)
        yield FhirServerHandle(base_url=base_url, token=token, timings=timings)
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------- a scripted, misbehaving server


@dataclass(frozen=True)
class Reply:
    """What `ScriptedServer` sends for one request."""

    status: int = 200
    body: bytes | dict[str, object] | list[object] = b""
    content_type: str = "application/fhir+json"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the status line
    drip_s: float = 0.0  # between body pieces
    drip_piece: int = 16  # bytes per piece when dripping
    content_length: bool = True  # False: no Content-Length, the body ends when the connection closes


@dataclass(frozen=True)
class Recorded:
    method: str
    target: str  # path and query as sent
    headers: dict[str, str]  # lower-case names


class ScriptedServer:
    """A tiny HTTP server on 127.0.0.1 answering with `Reply`s from `script(target) -> Reply`.

    It records every request (with headers) so tests can assert what a client sent, and where.
    """

    def __init__(self, script: Callable[[str], Reply] | None = None) -> None:
        self.script: Callable[[str], Reply] = script or (lambda _target: Reply(404))
        self.requests: list[Recorded] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                owner.requests.append(
                    Recorded("GET", self.path, {k.lower(): v for k, v in self.headers.items()})
                )
                reply = owner.script(self.path)
                body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                time.sleep(reply.delay_s)
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                if reply.content_length:
                    self.send_header("Content-Length", str(len(body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if not reply.drip_s:
                    self.wfile.write(body)
                    return
                for start in range(0, len(body), reply.drip_piece):
                    self.wfile.write(body[start : start + reply.drip_piece])
                    self.wfile.flush()
                    time.sleep(reply.drip_s)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that gave up mid-reply (the point of several tests)

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.origin = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.origin}/fhir"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
