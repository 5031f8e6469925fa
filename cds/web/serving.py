"""`ketamine-cds serve`: gunicorn, set up for production operations.

* **Drain on SIGTERM.** The master marks the deployment as draining at once (``/readyz`` answers 503, so
  the load balancer stops sending calls), keeps serving for ``drain_s`` seconds, and then stops the workers
  gracefully: calls in flight finish, and a request arriving on a kept-alive connection during the drain
  is answered with ``Connection: close`` so the client reconnects elsewhere instead of being reset. A
  second SIGTERM, or SIGINT/SIGQUIT, stops at once.
* **Read-only root filesystem.** Temporary files, gunicorn's worker heartbeat files and the metrics
  directory all live under ``work_dir`` (default ``/tmp``, an ``emptyDir`` in Kubernetes).
* **Metrics across workers.** A fresh ``PROMETHEUS_MULTIPROC_DIR`` under ``work_dir`` unless one is set;
  a stopped worker's series are marked dead.
* **JSON logs.** gunicorn's own lines use the service's JSON formatter.
* **Few malloc arenas.** glibc gives each thread that allocates its own arena (up to 8 per core), and memory
  freed in one arena is not reused by another, so each of a worker's threads keeps the high-water mark of
  the largest request it has served. ``malloc_arena_max`` (default 2) caps them in the master, before
  anything forks or starts a thread; the workers inherit it. Measured with four concurrent 5,000-resource
  requests: peak worker RSS 166 MB with glibc's default, 131 MB with 2 (bench/README.md).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import mmap
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import ThreadWorker

from cds.config import Settings
from cds.errors import ConfigError

# Two shared bytes, mapped before gunicorn forks: [0] the deployment drains (the master got SIGTERM),
# [1] the master is stopping its workers. Workers read both.
_DRAIN = mmap.mmap(-1, 2)
_SIGNAL_SETTLE_S = 0.3  # time for the master to act on a SIGTERM that reached the whole process group
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def draining() -> bool:
    return _DRAIN[0] == 1


class DrainingWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, answering every request with ``Connection: close`` once the deployment drains.

    A SIGTERM sent to the whole process group (systemd, some container runtimes) reaches the workers
    together with the master: a worker then keeps serving through the drain, and stops when the master
    stops it. A SIGTERM meant for one worker (gunicorn reducing or reloading workers) stops it as usual.
    """

    def handle_request(self, req: Any, conn: Any) -> Any:
        if draining() and self.cfg.keepalive:
            self.cfg.set("keepalive", 0)  # gthread then closes the connection after this response
        return super().handle_request(req, conn)

    def handle_exit(self, sig: Any, frame: Any) -> None:
        if _DRAIN[1] == 1:
            super().handle_exit(sig, frame)
            return
        threading.Thread(target=self._exit_unless_draining, args=(sig, frame), daemon=True).start()

    def _exit_unless_draining(self, sig: Any, frame: Any) -> None:
        time.sleep(_SIGNAL_SETTLE_S)
        if _DRAIN[0] == 1 and _DRAIN[1] == 0:
            return  # the master drains, then stops us
        super().handle_exit(sig, frame)


class DrainingArbiter(Arbiter):  # type: ignore[misc]
    """SIGTERM starts the drain; the main loop stops the workers once it is over."""

    drain_s = 5.0
    _deadline: float | None = None

    def handle_term(self) -> None:
        if self._deadline is not None or self.drain_s <= 0:
            raise StopIteration
        _DRAIN[0] = 1
        self._deadline = time.monotonic() + self.drain_s
        self.log.info("SIGTERM: not ready; serving for %g s more, then stopping", self.drain_s)

    def murder_workers(self) -> None:
        super().murder_workers()
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self.log.info("drain over: stopping the workers")
            raise StopIteration

    def stop(self, graceful: bool = True) -> None:
        _DRAIN[1] = 1  # from here on a worker's SIGTERM comes from us
        super().stop(graceful)


def _log_config(level: str) -> dict[str, Any]:
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    # libraries' records (SQLAlchemy's pool, Python warnings) as JSON too, not Python's plain last resort
    others = {**handler, "filters": ["others"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "cds.web.logs.JsonFormatter"}},
        "filters": {"others": {"()": "cds.web.logs.OthersOnly"}},
        "handlers": {"json": handler, "others": others},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["json"], "propagate": False},
            # no access log: its lines carry request paths and query strings; the audit line replaces it
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
        "root": {"level": "WARNING", "handlers": ["others"]},
    }


def _child_exit(_server: Any, worker: Any) -> None:
    if os.environ.get(_MULTIPROC_ENV):
        from prometheus_client import multiprocess  # noqa: PLC0415

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def prepare_work_dir(settings: Settings) -> Path:
    """Point every temporary file of this process and its workers at `work_dir`; set up metrics there.

    Call before anything imports prometheus_client (``cds.app`` does)."""
    if "prometheus_client" in sys.modules and settings.workers > 1 and not os.environ.get(_MULTIPROC_ENV):
        raise RuntimeError("prepare_work_dir must run before prometheus_client is imported")
    work = Path(settings.work_dir)
    try:
        work.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=work)  # noqa: SIM115 -- closed at once below
        probe.close()
    except OSError as exc:
        raise ConfigError(
            f"KETAMINE_CDS_WORK_DIR {str(work)!r} is not a writable directory ({type(exc).__name__})"
        ) from None
    os.environ["TMPDIR"] = str(work)  # for this process, its workers and anything they start
    tempfile.tempdir = str(work)
    if settings.workers > 1 and not os.environ.get(_MULTIPROC_ENV):
        # before prometheus_client is imported: it picks its multiprocess mode once, at import
        metrics_dir = tempfile.mkdtemp(prefix="metrics-", dir=work)
        os.environ[_MULTIPROC_ENV] = metrics_dir
        atexit.register(shutil.rmtree, metrics_dir, ignore_errors=True)
    return work


_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def limit_malloc_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at `count` for this process and the workers it forks. Must run before a
    second thread allocates (glibc fixes the limit when it first needs it). False when not applied:
    `count` 0, or a C library without mallopt (musl, macOS), where the default stays."""
    if count <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_ARENA_MAX, count))


def serve(settings: Settings, host: str, port: int, build: Callable[[Settings, bool], Any]) -> None:
    """Build once in the master (migrate, check, resolve the pseudonym key), then serve with workers.

    `build(settings, maintenance)` returns the Flask app; the master's copy is only a start-up check and
    is closed before forking (pooled connections must not be inherited).
    """
    limit_malloc_arenas(settings.malloc_arena_max)  # first: before build() starts any thread
    work = Path(settings.work_dir)
    logging.captureWarnings(True)  # warnings become log records, so JSON lines
    master_app = build(settings, True)
    runtime = master_app.extensions["ketamine_cds"]
    # Workers use the key the master resolved (perhaps generated and stored in the database), so they
    # need no database to start.
    worker_settings = replace(settings, audit_hash_key=runtime.hash_key)
    runtime.store.close()
    with contextlib.suppress(Exception):
        if runtime.redis is not None:
            runtime.redis.close()

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", settings.workers)
            self.cfg.set("worker_class", "cds.web.serving.DrainingWorker")
            self.cfg.set("threads", 4)
            self.cfg.set("timeout", 30)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("keepalive", 5)
            self.cfg.set("worker_tmp_dir", str(work))
            self.cfg.set("accesslog", None)  # our own audit line replaces it; access logs carry query strings
            self.cfg.set("logconfig_dict", _log_config(settings.log_level.upper()))
            self.cfg.set("child_exit", _child_exit)
            # gunicorn >= 25.1 opens a runtime-control socket at one fixed path per user: replicas on one host
            # would replace (and, stopping, delete) each other's, and we don't use it
            if "control_socket_disable" in self.cfg.settings:
                self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            from cds.app import tune_garbage_collector  # noqa: PLC0415

            app = build(worker_settings, False)
            tune_garbage_collector()
            return app

        def run(self) -> None:
            arbiter = DrainingArbiter(self)
            arbiter.drain_s = settings.drain_s
            arbiter.run()

    Server().run()
