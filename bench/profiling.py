"""Where the time goes: cProfile over the in-process app (Flask test client), one request size.

Reports the top functions by own time, the cumulative time of the request's stages (parse, checks,
gathering, facts, rules, cards, recording) and the wall time per request with and without the profiler
(cProfile roughly doubles the cost of Python-heavy code, so read shares, not absolute times).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.load import summarise_ms
from cds import app as app_module
from cds.app import create_app
from cds.clinical.knowledge import Knowledge
from cds.config import load_settings

# (label, where the function lives, its names): the stages of one hook call, in order. Names, not line
# numbers, so the table survives refactoring; a stage whose function no longer exists shows as "not called".
STAGES: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("whole request (Flask dispatch)", "cds/", frozenset({"call_service"})),
    ("read body + decode + checks", "cds/", frozenset({"_read_json"})),
    ("  JSON decoding (msgspec)", "cds/fhir/decoding.py", frozenset({"decode_json"})),
    ("  nesting-depth check", "cds/", frozenset({"depth_exceeds", "_depth_exceeds"})),
    ("  schema validation (jsonschema)", "jsonschema/validators.py", frozenset({"iter_errors"})),
    ("  resource count", "cds/", frozenset({"_count_resources"})),
    ("screen (all below)", "cds/clinical/screening.py", frozenset({"screen"})),
    ("  gather prefetch / FHIR", "cds/fhir/prefetch.py", frozenset({"gather"})),
    ("  build facts", "cds/fhir/facts.py", frozenset({"build_facts"})),
    ("  decide situation", "cds/clinical/situation.py", frozenset({"decide"})),
    ("  evaluate rules", "cds/clinical/engine.py", frozenset({"evaluate"})),
    (
        "  R4 conformance of finding records (fhir.resources)",
        "cds/fhir/conformance.py",
        frozenset({"annotate"}),
    ),
    ("  render cards", "cds/clinical/cards.py", frozenset({"render"})),
    ("repeat suppression", "cds/web/runtime.py", frozenset({"suppress_repeats"})),
    ("record cards (queue)", "cds/web/runtime.py", frozenset({"record_cards"})),
    ("audit line + metrics", "cds/web/runtime.py", frozenset({"audit"})),
    ("response JSON", "cds/web/api.py", frozenset({"_json_response"})),
)


def _short(filename: str) -> str:
    if "/site-packages/" in filename:
        return filename.split("/site-packages/", 1)[1]
    stdlib = re.search(r"/lib/python3\.\d+/(.*)$", filename)
    if stdlib:
        return stdlib.group(1)
    try:
        return str(Path(filename).resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return filename


def profile_request(
    body: bytes,
    path: str,
    *,
    requests: int,
    workdir: Path,
    knowledge: Knowledge | None = None,
    gc_requests: int = 60,
) -> dict[str, Any]:
    settings = load_settings(
        environ={},
        overrides={
            "dev_mode": True,
            "database_url": f"sqlite:///{workdir / 'profile.sqlite3'}",
            "log_level": "WARNING",
        },
    )
    app = create_app(settings, knowledge=knowledge)
    client = app.test_client()
    headers = {"Content-Type": "application/json"}

    def one() -> None:
        response = client.post(path, data=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"profiled request answered {response.status_code}: {response.data[:500]!r}")

    for _ in range(3):
        one()
    gc_study = _gc_study(one, gc_requests)  # leaves the serving worker's GC tuning applied
    started = time.perf_counter()
    for _ in range(requests):
        one()
    plain_ms = (time.perf_counter() - started) * 1000 / requests

    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for _ in range(requests):
        one()
    profiler.disable()
    profiled_ms = (time.perf_counter() - started) * 1000 / requests
    app.extensions["ketamine_cds"].flush()

    stats = pstats.Stats(profiler)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total_tt = sum(v[2] for v in raw.values())
    rows: list[dict[str, Any]] = []
    for (filename, line, name), (_cc, nc, tt, ct, _callers) in raw.items():
        rows.append(
            {
                "function": f"{_short(filename)}:{line}({name})",
                "calls_per_request": nc / requests,
                "own_ms_per_request": tt * 1000 / requests,
                "cum_ms_per_request": ct * 1000 / requests,
                "own_share": tt / total_tt if total_tt else 0.0,
            }
        )
    by_own = sorted(rows, key=lambda r: r["own_ms_per_request"], reverse=True)[:25]
    by_cum = sorted(
        (r for r in rows if r["function"].startswith("cds/")),
        key=lambda r: r["cum_ms_per_request"],
        reverse=True,
    )[:25]

    whole = None
    stages = []
    for label, where, names in STAGES:
        found = [ct for (f, _l, n), (_cc, _nc, _tt, ct, _c) in raw.items() if n in names and where in f]
        ms = sum(found) * 1000 / requests
        if whole is None:
            whole = ms
        stages.append(
            {
                "stage": label,
                "called": bool(found),
                "cum_ms_per_request": ms if found else None,
                "share": ms / whole if found and whole else None,
            }
        )

    fhir_resources_loaded = any(m == "fhir.resources" or m.startswith("fhir.resources.") for m in sys.modules)
    return {
        "gc": gc_study,
        "full_validation": _full_validation_cost(body),
        "requests": requests,
        "wall_ms_per_request": plain_ms,
        "wall_ms_per_request_profiled": profiled_ms,
        "top_own_time": by_own,
        "top_cumulative_cds": by_cum,
        "stages": stages,
        "fhir_resources_imported": fhir_resources_loaded,
    }


def _timed_series(one: Callable[[], None], n: int) -> tuple[dict[str, float], dict[int, list[float]]]:
    """Latency of `n` requests and the duration of every garbage collection (per generation) meanwhile."""
    collections: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            collections[info["generation"]].append((time.perf_counter() - started.pop()) * 1000)

    samples = []
    gc.callbacks.append(callback)
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            one()
            samples.append(time.perf_counter() - t0)
    finally:
        gc.callbacks.remove(callback)
    return summarise_ms(samples), collections


def _serving_gc_tuning() -> tuple[str, Callable[[], None]]:
    """What the serving worker does to the collector after start-up, or plain gc.freeze() if nothing."""
    tune = getattr(app_module, "tune_garbage_collector", None)
    if callable(tune):
        return "cds.app.tune_garbage_collector()", tune

    def freeze() -> None:
        gc.collect()
        gc.freeze()

    return "gc.freeze()", freeze


def _gc_study(one: Callable[[], None], n: int) -> dict[str, Any]:
    """How much of the tail is CPython's cyclic garbage collector, with and without the worker's tuning.

    The app keeps ~10^5 long-lived objects (rules, value sets, indexes); every full (generation 2)
    collection walks all of them unless they were frozen after start-up. Measured first as the app
    factory leaves the process, then after the serving worker's tuning (which stays applied for the
    profile that follows, as in production).
    """
    plain, collections = _timed_series(one, n)
    tracked = len(gc.get_objects())
    thresholds = list(gc.get_threshold())
    label, tune = _serving_gc_tuning()
    tune()
    tuned, tuned_collections = _timed_series(one, n)

    def per_generation(found: dict[int, list[float]]) -> dict[str, Any]:
        return {
            str(g): {
                "collections_per_request": len(v) / n,
                "ms_total_per_request": sum(v) / n,
                "ms_max": max(v, default=0.0),
            }
            for g, v in found.items()
        }

    return {
        "requests": n,
        "tracked_objects": tracked,
        "thresholds": thresholds,
        "latency": plain,
        "collections": per_generation(collections),
        "tuning": label,
        "tuning_is_the_services": label != "gc.freeze()",
        "thresholds_after_tuning": list(gc.get_threshold()),
        "latency_after_tuning": tuned,
        "collections_after_tuning": per_generation(tuned_collections),
    }


def _full_validation_cost(body: bytes) -> dict[str, Any] | None:
    """What R4 model validation (cds.fhir.conformance, fhir.resources) of *every* resource would cost."""
    try:
        from cds.fhir.conformance import MODELS, conformance_problem  # noqa: PLC0415 (may not exist)
    except ImportError:
        return None
    request = json.loads(body)
    resources = [
        entry["resource"]
        for value in request.get("prefetch", {}).values()
        if isinstance(value, dict) and value.get("resourceType") == "Bundle"
        for entry in value.get("entry", [])
        if entry.get("resource", {}).get("resourceType") in MODELS
    ]
    if not resources:
        return None
    for resource in resources[:50]:  # warm the models
        conformance_problem(resource)
    started = time.perf_counter()
    problems = sum(1 for resource in resources if conformance_problem(resource) is not None)
    seconds = time.perf_counter() - started
    return {
        "resources": len(resources),
        "ms_total": seconds * 1000,
        "us_per_resource": seconds * 1e6 / len(resources),
        "nonconformant": problems,
    }


def profile_in_subprocess(body: bytes, path: str, *, requests: int, gc_requests: int) -> dict[str, Any]:
    """Run `profile_request` in a fresh interpreter, so the benchmark's own objects (generated records,
    bodies) do not weigh on the garbage collector being measured, and the code and rules are read together.
    """
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        body_path = Path(tmp) / "body.json"
        out_path = Path(tmp) / "profile.json"
        body_path.write_bytes(body)
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.profiling",
                str(body_path),
                str(out_path),
                "--path",
                path,
                "--requests",
                str(requests),
                "--gc-requests",
                str(gc_requests),
            ],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"profiling exited with {completed.returncode}: {completed.stderr[-1500:]}")
        result: dict[str, Any] = json.loads(out_path.read_text(encoding="utf-8"))
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description="profile one request body in process (used by bench.run)")
    parser.add_argument("body", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--path", default="/cds-services/ketamine-order-select")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--gc-requests", type=int, default=80)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-profile-db-") as tmp:
        result = profile_request(
            args.body.read_bytes(),
            args.path,
            requests=args.requests,
            workdir=Path(tmp),
            gc_requests=args.gc_requests,
        )
    args.out.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
