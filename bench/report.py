"""Raw results -> ratios, growth fits and target verdicts; writes results.json, REPORT.md, latency.png."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

MODES = ("floor", "floor-orjson", "floor-msgspec", "prefetch", "fhir-floor", "fhir")
FLOORS = ("floor", "floor-orjson", "floor-msgspec")  # "floor" (json.loads) is the one targets refer to
SERVICE_MODES = ("prefetch", "fhir")
LABELS = {
    "floor": "floor (parse only)",
    "floor-orjson": "floor, orjson (parse only)",
    "floor-msgspec": "floor, msgspec (parse only)",
    "prefetch": "service, full prefetch",
    "fhir-floor": "floor, FHIR fetch only (no screening)",
    "fhir": "service, FHIR fallback",
}
TARGET_SIZE = 1000
MB = 1_000_000


def _lat(results: dict[str, Any], mode: str, size: int, key: str) -> float | None:
    try:
        value = results["modes"][mode]["sizes"][str(size)]["latency"][key]
    except KeyError:
        return None
    return float(value)


def _series(results: dict[str, Any], mode: str, sizes: list[int], key: str) -> list[tuple[int, float]]:
    """(size, latency) for the sizes measured in `mode`, skipping sizes without a figure."""
    return [(size, value) for size in sizes if (value := _lat(results, mode, size, key)) is not None]


def _rps(results: dict[str, Any], mode: str, size: int) -> float | None:
    try:
        return float(results["modes"][mode]["sizes"][str(size)]["throughput"]["rps"])
    except KeyError:
        return None


def _cpu(results: dict[str, Any], mode: str, size: int) -> float | None:
    """CPU ms per request of everything serving the mode (workers, and sekmet for the FHIR fallback)."""
    try:
        per_request = results["modes"][mode]["sizes"][str(size)]["throughput"]["cpu_ms_per_request"]
    except KeyError:
        return None
    values = [v for k, v in per_request.items() if k != "client" and v is not None]
    return sum(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fit(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    """Least squares y = a + b x, with R^2."""
    if len(xs) < 2:
        return None
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if not sxx:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return {
        "intercept_ms": intercept,
        "slope_us_per_resource": slope * 1000,
        "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
    }


def _growth(results: dict[str, Any], mode: str, sizes: list[int]) -> dict[str, Any]:
    points = _series(results, mode, sizes, "p50_ms")
    if not points:
        return {}
    segments = []
    for (s1, v1), (s2, v2) in itertools.pairwise(points):
        segments.append(
            {
                "from": s1,
                "to": s2,
                "us_per_resource": (v2 - v1) * 1000 / (s2 - s1),
                "loglog_exponent": math.log(v2 / v1) / math.log(s2 / s1) if v1 > 0 and v2 > 0 else None,
            }
        )
    cpu = []
    for s in sizes:
        try:
            per_request = results["modes"][mode]["sizes"][str(s)]["throughput"]["cpu_ms_per_request"]
        except KeyError:
            continue
        service_cpu = per_request.get("server workers")
        if service_cpu is not None:
            cpu.append({"size": s, "worker_cpu_ms": service_cpu, "us_per_resource": service_cpu * 1000 / s})
    return {
        "p50_fit": _fit([float(s) for s, _ in points], [v for _, v in points]),
        "segments": segments,
        "worker_cpu_per_request": cpu,
    }


def _linearity(growth: dict[str, Any]) -> dict[str, Any]:
    """Linear = the per-resource cost of the largest size step is at most 1.25x that of the step before.

    Judged twice: on p50 latency at concurrency 1 (marginal cost between sizes) and on the workers' CPU
    per request under load (per resource). Latency on a shared machine is noisier than CPU time, so when
    the two disagree the verdict says so instead of picking one.
    """
    target = (
        "prefetch cost linear in record size (per-resource cost of the largest size step at most 1.25x "
        "the step before; by p50 latency and by worker CPU per request)"
    )
    segs = [s for s in growth.get("segments", []) if s["from"] >= 200]
    cpu = [c for c in growth.get("worker_cpu_per_request", []) if c["size"] >= 200]
    parts: list[str] = []
    verdicts: list[bool] = []
    if len(segs) >= 2:
        prev, last = segs[-2], segs[-1]
        factor = (
            last["us_per_resource"] / prev["us_per_resource"] if prev["us_per_resource"] > 0 else math.inf
        )
        verdicts.append(factor <= 1.25)
        parts.append(
            f"p50: {prev['from']}->{prev['to']} {prev['us_per_resource']:.0f} us/resource, "
            f"{last['from']}->{last['to']} {last['us_per_resource']:.0f} us/resource ({factor:.2f}x)"
        )
    if len(cpu) >= 3:
        steps = []
        for (s1, c1), (s2, c2) in itertools.pairwise((c["size"], c["worker_cpu_ms"]) for c in cpu):
            steps.append((s1, s2, (c2 - c1) * 1000 / (s2 - s1)))
        (a1, a2, prev_cost), (b1, b2, last_cost) = steps[-2], steps[-1]
        factor = last_cost / prev_cost if prev_cost > 0 else math.inf
        verdicts.append(factor <= 1.25)
        parts.append(
            f"CPU: {a1}->{a2} {prev_cost:.0f} us/resource, {b1}->{b2} {last_cost:.0f} us/resource "
            f"({factor:.2f}x)"
        )
    if not verdicts:
        verdict = "not measured"
    elif all(verdicts):
        verdict = "PASS"
    elif not any(verdicts):
        verdict = "FAIL"
    else:
        verdict = "UNCLEAR (latency and CPU disagree)"
    return {"target": target, "measured": "; ".join(parts) or None, "verdict": verdict}


def _scaling(results: dict[str, Any]) -> dict[str, Any]:
    """Throughput of the full-prefetch service with 2 workers over 1, measured back to back."""
    runs = results.get("scaling", {}).get("workers", {})
    one, two = runs.get("1", {}).get("rps"), runs.get("2", {}).get("rps")
    return {
        "size": results.get("scaling", {}).get("size"),
        "rps": (two, one),
        "ratio": _ratio(two, one),
    }


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("PASS" if ok else "FAIL")


def analyse(results: dict[str, Any]) -> dict[str, Any]:
    sizes = [int(s) for s in results["meta"]["sizes"]]
    modes = [m for m in MODES if m in results["modes"]]
    ratios: dict[str, Any] = {}
    for mode in modes:
        if mode in FLOORS:
            continue
        ratios[mode] = {
            str(s): {
                "p50": _ratio(_lat(results, mode, s, "p50_ms"), _lat(results, "floor", s, "p50_ms")),
                "p95": _ratio(_lat(results, mode, s, "p95_ms"), _lat(results, "floor", s, "p95_ms")),
                "p99": _ratio(_lat(results, mode, s, "p99_ms"), _lat(results, "floor", s, "p99_ms")),
                "throughput": _ratio(_rps(results, mode, s), _rps(results, "floor", s)),
                # capacity from CPU cost alone (floor CPU / mode CPU per request): less sensitive to
                # other work on a shared machine than the measured requests/s
                "throughput_by_cpu": _ratio(_cpu(results, "floor", s), _cpu(results, mode, s)),
            }
            for s in sizes
        }
    growth = {mode: _growth(results, mode, sizes) for mode in modes}

    floor_ratios = {
        mode: {
            floor: {
                str(s): {
                    "p50": _ratio(_lat(results, mode, s, "p50_ms"), _lat(results, floor, s, "p50_ms")),
                    "p95": _ratio(_lat(results, mode, s, "p95_ms"), _lat(results, floor, s, "p95_ms")),
                    "throughput": _ratio(_rps(results, mode, s), _rps(results, floor, s)),
                    "throughput_by_cpu": _ratio(_cpu(results, floor, s), _cpu(results, mode, s)),
                }
                for s in sizes
            }
            for floor in FLOORS
            if floor in results["modes"]
        }
        for mode in modes
        if mode != "floor"
    }

    targets = []
    t = TARGET_SIZE
    p50, p95 = _lat(results, "prefetch", t, "p50_ms"), _lat(results, "prefetch", t, "p95_ms")
    floor50, floor95 = _lat(results, "floor", t, "p50_ms"), _lat(results, "floor", t, "p95_ms")
    ratio50, ratio95 = _ratio(p50, floor50), _ratio(p95, floor95)
    targets.append(
        {
            "target": f"prefetch p50 at most 1.0x the json.loads floor's, p95 at most 1.2x ({t} resources)",
            "measured": None
            if ratio50 is None or ratio95 is None
            else f"p50 {ratio50:.2f}x ({p50:.1f} ms vs {floor50:.1f} ms), "
            f"p95 {ratio95:.2f}x ({p95:.1f} ms vs {floor95:.1f} ms)",
            "verdict": _verdict(
                None if ratio50 is None or ratio95 is None else ratio50 <= 1.0 and ratio95 <= 1.2
            ),
        }
    )
    small = min(sizes)
    s50, f50 = _lat(results, "prefetch", small, "p50_ms"), _lat(results, "floor", small, "p50_ms")
    small_tp = _ratio(_rps(results, "prefetch", small), _rps(results, "floor", small))
    small_cpu = _ratio(_cpu(results, "floor", small), _cpu(results, "prefetch", small))
    targets.append(
        {
            "target": f"prefetch p50 at most the floor's plus 1.5 ms, throughput at least 0.5x "
            f"({small} resources)",
            "measured": None
            if s50 is None or f50 is None or small_tp is None
            else f"p50 +{s50 - f50:.1f} ms ({s50:.1f} vs {f50:.1f} ms); throughput {small_tp:.2f}x "
            f"(by CPU {_f(small_cpu, 2, 'x')})",
            "verdict": _verdict(
                None
                if s50 is None or f50 is None or small_tp is None
                else s50 - f50 <= 1.5 and small_tp >= 0.5
            ),
        }
    )
    targets.append(
        {
            "target": f"prefetch p95 under 25 ms ({t} resources)",
            "measured": None if p95 is None else f"{p95:.1f} ms",
            "verdict": _verdict(None if p95 is None else p95 < 25.0),
        }
    )
    tp = {s: _ratio(_rps(results, "prefetch", s), _rps(results, "floor", s)) for s in sizes}
    tp_known = {s: r for s, r in tp.items() if r is not None}
    targets.append(
        {
            "target": "prefetch throughput at least half the floor's (every size)",
            "measured": (
                ", ".join(
                    f"{s}: {r:.2f}x (by CPU {_f(ratios['prefetch'][str(s)]['throughput_by_cpu'], 2, 'x')})"
                    for s, r in tp_known.items()
                )
                or None
            ),
            "verdict": _verdict(all(r >= 0.5 for r in tp_known.values()) if tp_known else None),
        }
    )
    targets.append(_linearity(growth.get("prefetch", {})))
    peaks = [
        results["modes"][m]["memory"]["peak_worker_hwm_kb"] * 1024 / MB
        for m in ("prefetch", "fhir")
        if m in results["modes"]
    ]
    peak = max(peaks) if peaks else None
    by_size = []
    for s in sizes:
        seq = [
            w.get("VmHWM", 0) * 1024 / MB
            for w in results["modes"]["prefetch"]["sizes"]
            .get(str(s), {})
            .get("worker_memory_after_latency", [])
        ]
        load = [
            w.get("VmHWM", 0) * 1024 / MB
            for w in results["modes"]["prefetch"]["sizes"].get(str(s), {}).get("worker_memory_after", [])
        ]
        if seq and load:
            by_size.append(f"{s}: {max(seq):.0f} / {max(load):.0f}")
    targets.append(
        {
            "target": "memory per service worker under 150 MB (peak RSS, VmHWM, every size and load)",
            "measured": None
            if peak is None
            else f"peak {peak:.0f} MB; prefetch worker after each size, concurrency 1 / under load: "
            + ", ".join(by_size),
            "verdict": _verdict(None if peak is None else peak < 150),
        }
    )
    fhir95 = _lat(results, "fhir", t, "p95_ms")
    fetch50, fetch95 = _lat(results, "fhir-floor", t, "p50_ms"), _lat(results, "fhir-floor", t, "p95_ms")
    fetch_floor = (
        ""
        if fetch50 is None or fetch95 is None
        else f"; the same searches fetched alone (no screening): p50 {fetch50:.1f} ms, p95 {fetch95:.1f} ms"
    )
    targets.append(
        {
            "target": f"FHIR fallback p95 under 100 ms against the local server ({t} resources)",
            "measured": None if fhir95 is None else f"{fhir95:.1f} ms{fetch_floor}",
            "verdict": _verdict(None if fhir95 is None else fhir95 < 100.0),
        }
    )
    scaling = _scaling(results)
    targets.append(
        {
            "target": "2 workers give at least 1.8x the throughput of 1 "
            f"({scaling.get('size', t)} resources)",
            "measured": None
            if scaling.get("ratio") is None
            else f"{scaling['ratio']:.2f}x ({scaling['rps'][0]:.1f} vs {scaling['rps'][1]:.1f} requests/s)",
            "verdict": _verdict(None if scaling.get("ratio") is None else scaling["ratio"] >= 1.8),
        }
    )
    cards_match = {}
    if "fhir" in results["modes"]:
        for s in sizes:
            a = results["modes"]["prefetch"]["sizes"].get(str(s), {}).get("cards")
            b = results["modes"]["fhir"]["sizes"].get(str(s), {}).get("cards")
            cards_match[str(s)] = a == b
    errors = {
        mode: {
            str(s): {
                k: v
                for k, v in results["modes"][mode]["sizes"][str(s)]["latency"].get("statuses", {}).items()
                if k != "200"
            }
            | {
                f"throughput {k}": v
                for k, v in results["modes"][mode]["sizes"][str(s)]["throughput"]["statuses"].items()
                if k != "200"
            }
            for s in sizes
            if str(s) in results["modes"][mode]["sizes"]
        }
        for mode in modes
    }
    return {
        "ratios_to_floor": ratios,
        "ratios_to_floors": floor_ratios,
        "scaling": scaling,
        "growth": growth,
        "targets": targets,
        "cards_prefetch_equal_fhir": cards_match,
        "non_200": errors,
    }


# ------------------------------------------------------------------------------------------ writing


def _f(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 (only needed here; keeps `--help` fast)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    sizes = [int(s) for s in results["meta"]["sizes"]]
    fig, ax = plt.subplots(figsize=(8, 5.2))
    colours = {
        "floor": "#555555",
        "floor-orjson": "#999999",
        "floor-msgspec": "#bbbbbb",
        "prefetch": "#1f77b4",
        "fhir-floor": "#ff9896",
        "fhir": "#d62728",
    }
    for mode in MODES:
        if mode not in results["modes"]:
            continue
        p95, p50 = (_series(results, mode, sizes, key) for key in ("p95_ms", "p50_ms"))
        ax.plot(
            [size for size, _ in p95],
            [value for _, value in p95],
            "o-",
            color=colours[mode],
            label=f"{LABELS[mode]}, p95",
        )
        ax.plot(
            [size for size, _ in p50],
            [value for _, value in p50],
            ":",
            color=colours[mode],
            alpha=0.6,
            label=f"{LABELS[mode]}, p50",
        )
    floor_xs = [s for s in sizes if _lat(results, "floor", s, "p95_ms") is not None]
    if floor_xs:
        ax.plot(
            floor_xs,
            [1.2 * (_lat(results, "floor", s, "p95_ms") or 0.0) for s in floor_xs],
            "--",
            color=colours["floor"],
            linewidth=0.9,
            alpha=0.7,
            label="target: prefetch p95 at most 1.2x the floor's p95",
        )
    ax.plot(
        [TARGET_SIZE],
        [25],
        marker="v",
        color=colours["prefetch"],
        linestyle="none",
        markersize=9,
        label="target: prefetch p95 < 25 ms at 1,000",
    )
    ax.plot(
        [TARGET_SIZE],
        [100],
        marker="v",
        color=colours["fhir"],
        linestyle="none",
        markersize=9,
        label="target: FHIR fallback p95 < 100 ms at 1,000",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([f"{s:,}" for s in sizes])
    ax.set_xlabel("resources in the patient record")
    ax.set_ylabel("latency at concurrency 1 (ms, log scale)")
    meta = results["meta"]
    ax.set_title(
        f"order-select latency vs record size (gunicorn {meta['workers']}x"
        f"{meta['threads_per_worker']} gthread, {meta['machine']['nproc']} cores, {meta['date'][:10]})",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fhir_resources_note(results: dict[str, Any]) -> str:
    users = results["meta"].get("fhir_resources_users") or []
    profile = results.get("profile") or {}
    if not users:
        return (
            "fhir.resources model validation: `cds/` does not import `fhir.resources`; requests are checked "
            "with the CDS Hooks JSON schema and read as plain dicts, so there is no model validation on the "
            "hot path to keep or to move."
        )
    stage = next((s for s in profile.get("stages", []) if "conformance" in s["stage"]), None)
    full = profile.get("full_validation")
    size = profile.get("size")
    text = (
        f"fhir.resources model validation is used by {', '.join(f'`{u}`' for u in users)}. "
        "On the request path it checks only the records behind findings (and the ketamine orders)"
    )
    if stage and stage.get("called"):
        text += (
            f": {stage['cum_ms_per_request']:.2f} ms per request under the profiler, "
            f"{stage['share'] * 100:.1f} % of the {size:,}-resource request"
        )
    text += "."
    if full:
        p95 = _lat(results, "prefetch", size, "p95_ms") if size else None
        text += (
            f" Validating *every* resource of that record instead would add {full['ms_total']:.0f} ms "
            f"({full['us_per_resource']:.0f} us per resource, {full['resources']:,} resources, "
            "measured without the profiler"
            + (f"; the whole request's p95 is {p95:.0f} ms" if p95 else "")
            + "), so validation stays limited to the records that carry a finding."
        )
    return text


def _stage_table(profile: dict[str, Any]) -> list[str]:
    return _table(
        ["stage", "ms per request", "share of request"],
        [
            [
                s["stage"].replace("  ", "&nbsp;&nbsp;"),
                _f(s["cum_ms_per_request"], 2) if s.get("called", True) else "not called",
                _f(s["share"] * 100, 0, " %") if s.get("share") is not None else "-",
            ]
            for s in profile["stages"]
        ],
    )


def _gc_section(profile: dict[str, Any]) -> list[str]:
    study = profile.get("gc")
    if not study or "latency_after_tuning" not in study:
        return []
    plain, tuned = study["latency"], study["latency_after_tuning"]
    full, full_tuned = study["collections"]["2"], study["collections_after_tuning"]["2"]
    who = (
        f"`{study['tuning']}`, which the serving worker calls once the app is built (cds/cli.py)"
        if study["tuning_is_the_services"]
        else "`gc.freeze()` (the service does not tune its collector; shown as what it would change)"
    )
    lines = [
        "",
        "### The p95 tail: CPython's cyclic garbage collector",
        "",
        f"{study['requests']} requests per row, `gc.callbacks` timing every collection. As the app factory "
        f"leaves the process, it tracks {study['tracked_objects']:,} objects (thresholds "
        f"{tuple(study['thresholds'])}), most of them long-lived knowledge (rules, value sets, indexes), and "
        f"every full (generation-2) collection walks them all: {full['collections_per_request']:.2f} per "
        f"request, up to {full['ms_max']:.0f} ms each. Second row: after {who}; thresholds then "
        f"{tuple(study['thresholds_after_tuning'])}. The cProfile figures above and below are with it.",
        "",
    ]
    rows = []
    for label, lat, coll in (
        ("untuned (app factory only)", plain, full),
        (f"after {study['tuning']}", tuned, full_tuned),
    ):
        rows.append(
            [
                label,
                _f(lat.get("p50_ms")),
                _f(lat.get("p95_ms")),
                _f(lat.get("p99_ms")),
                _f(lat.get("max_ms")),
                _f(coll["collections_per_request"], 2),
                _f(coll["ms_total_per_request"], 1),
            ]
        )
    lines += _table(
        ["", "p50 ms", "p95 ms", "p99 ms", "max ms", "full collections/request", "their ms/request"], rows
    )
    return lines


def _throughput_notes(results: dict[str, Any], sizes: list[int]) -> list[str]:
    lines: list[str] = []
    client_bound = []
    for s in sizes:
        tp = results["modes"]["floor"]["sizes"].get(str(s), {}).get("throughput")
        if tp and tp["client_cpu_share"] > 0.1:
            client_bound.append((s, tp["client_cpu_share"]))
    if client_bound:
        lines += [
            "",
            "The client took a noticeable share of the machine while driving the floor ("
            + ", ".join(f"{s:,} resources: {share:.0%}" for s, share in client_bound)
            + "), so there the floor's measured requests/s is held back by the client and the measured "
            "ratio flatters the service; the *by CPU* ratio does not depend on the client.",
        ]
    fhir_412 = []
    for s in sizes:
        tp = results["modes"].get("fhir", {}).get("sizes", {}).get(str(s), {}).get("throughput", {})
        if tp.get("statuses", {}).get("412"):
            fhir_412.append(s)
    if fhir_412:
        lines += [
            "",
            "HTTP 412 from the FHIR fallback under load ("
            + ", ".join(f"{s:,}" for s in fhir_412)
            + " resources): with several fallback requests at once, sekmet (one process on the same two "
            "cores) serves the searches of all of them, and a request whose fetches do not finish within the "
            "service's FHIR time budget (`fhir_time_budget_s`, 4 s) is refused with 412 rather than screened "
            "on partial data, as designed."
            + (
                " At concurrency 1 every fallback request at these sizes succeeded (table above)."
                if all(
                    set(results["modes"]["fhir"]["sizes"][str(s)]["latency"].get("statuses", {})) <= {"200"}
                    for s in fhir_412
                )
                else ""
            ),
        ]
    return lines


def _floors_section(results: dict[str, Any], sizes: list[int]) -> list[str]:
    floors = [f for f in FLOORS if f in results["modes"]]
    if len(floors) < 2:
        return []
    ratios = results["analysis"]["ratios_to_floors"]
    lines = [
        "",
        "## Against the three floors",
        "",
        "The same figures set against each parse-only floor: the standard library's `json.loads` (the "
        "floor the targets use), `orjson.loads` and `msgspec.json.decode` (both into plain dicts and lists). "
        "Each cell gives p50 / p95 latency ratio (concurrency 1) and throughput ratio (measured; by CPU in "
        "brackets). Ratios below 1 mean faster than that floor. The faster floors' own rows show how much "
        "of the standard-library floor is parsing.",
        "",
    ]
    rows = []
    for s in sizes:
        for mode in [*floors[1:], *SERVICE_MODES]:
            if mode not in ratios or str(s) not in ratios[mode].get("floor", {}):
                continue
            cells = []
            for floor in floors:
                if floor == mode:
                    cells.append("-")
                    continue
                r = ratios[mode].get(floor, {}).get(str(s), {})
                cells.append(
                    f"{_f(r.get('p50'), 2, 'x')} / {_f(r.get('p95'), 2, 'x')}; "
                    f"{_f(r.get('throughput'), 2, 'x')} ({_f(r.get('throughput_by_cpu'), 2, 'x')})"
                )
            rows.append([f"{s:,}", LABELS[mode], *cells])
    lines += _table(["resources", "mode", *[f"vs {LABELS[f]}" for f in floors]], rows)
    return lines


def _scaling_section(results: dict[str, Any]) -> list[str]:
    scaling = results.get("scaling")
    if not scaling:
        return []
    runs = scaling["workers"]
    rounds = scaling.get("rounds", 1)
    lines = [
        "",
        "## Scaling: 2 workers against 1",
        "",
        f"The full-prefetch service at {scaling['size']:,} resources, {scaling['concurrency']} client "
        f"processes, with 2 workers (the running instance) and with 1 (a second instance, same settings), "
        f"in {rounds} alternating rounds of {scaling['seconds'] / rounds:.1f} s "
        "each, so that other work on the machine falls on both alike; requests/s over all rounds, p95 of "
        "the median round. On 2 cores the clients take part of the machine from the servers; their share "
        "is given.",
        "",
    ]
    rows = []
    for workers in sorted(runs, key=int):
        tp = runs[workers]
        cpu = tp.get("cpu_ms_per_request", {})
        rows.append(
            [
                workers,
                _f(tp["rps"]),
                str(tp["requests"]),
                _f(tp["latency_under_load"].get("p95_ms")),
                _f(cpu.get("server workers"), 2),
                _f(tp["client_cpu_share"] * 100, 0, " %"),
                _f(tp.get("other_load_cores"), 2),
            ]
        )
    lines += _table(
        [
            "workers",
            "requests/s",
            "requests",
            "p95 under load ms",
            "CPU ms/req workers",
            "client CPU share",
            "other load",
        ],
        rows,
    )
    ratio = results["analysis"]["scaling"].get("ratio")
    lines += ["", f"2 workers over 1: **{_f(ratio, 2, 'x')}**."]
    return lines


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    analysis = results["analysis"]
    sizes = [int(s) for s in meta["sizes"]]
    modes = [m for m in MODES if m in results["modes"]]
    m = meta["machine"]
    lines = [
        "# Benchmark: ketamine-cds order-select against the parse-only floor",
        "",
        f"- **Date:** {meta['date']} (run took {meta['duration_s']:.0f} s)",
        f"- **Command:** `{meta['command']}` (from the repository root with `.venv/bin/python`; "
        "`make bench` runs the same)",
        f"- **Machine:** {m['nproc']} cores (nproc), {m['cpu_model']}, {m['memory_gb']} GB RAM, "
        f"Python {m['python']}, {m['platform']}",
        f"- **Source:** commit `{meta['source']['commit'][:12]}`"
        + (
            f", with {meta['source']['uncommitted_service_files']} uncommitted change(s) under cds/, rules/, "
            "hooks/ in the working tree at run time (others work in the same tree; the numbers are for "
            "that tree)"
            if meta["source"]["uncommitted_service_files"]
            else ""
        ),
        "- **Versions:** " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- **Server stack (every mode):** gunicorn, {meta['workers']} workers x "
        f"{meta['threads_per_worker']} threads ({meta['worker_class']}), the settings of "
        "`ketamine-cds serve` (cds/cli.py); the service runs as `ketamine-cds serve --dev` (dev mode: no "
        "client JWT check, everything else as in production, audit log and SQLite store included); the "
        "floor as `gunicorn ... bench.floor_app:app`",
        f"- **Machine load:** {meta['before_start']['other_load_cores']:.2f} cores busy with other work just "
        f"before the start (after waiting {meta['before_start']['waited_s']:.0f} s for it to drop under "
        f"{meta['before_start']['threshold_cores']}); load average "
        f"{' / '.join(meta.get('loadavg_at_start', []))} at the start, "
        f"{' / '.join(meta.get('loadavg_at_end', []))} at the end (1/5/15 min). Other sessions share this "
        "machine; the *other load* columns give the CPU (in cores) that processes outside the benchmark used "
        "during each measurement, from /proc/stat minus the benchmark's own processes.",
        "- **Machine speed:** a fixed CPU task (json.loads of the "
        f"{results.get('profile', {}).get('size', 1000):,}-resource body in the benchmark process, median "
        "of 20) took "
        + ", ".join(
            f"{v:.1f} ms ({k if k in {'start', 'end'} else f'{int(k):,} resources'})"
            for k, v in meta.get("reference_ms", {}).items()
        )
        + " (before each size's measurements, and at the start and end). This host's speed drifts by "
        "tens of percent even with no other "
        "work in the VM, so compare runs through ratios and through this figure, not raw milliseconds.",
        f"- **Client:** {meta['client']}; seed {meta['seed']}"
        + ("; **quick smoke run** (few iterations: not for decisions)" if meta["quick"] else ""),
        "",
        "## Targets",
        "",
    ]
    lines += _table(
        ["target", "measured", "verdict"],
        [[t["target"], _f(t["measured"]), f"**{t['verdict']}**"] for t in analysis["targets"]],
    )
    profile = results.get("profile", {})
    lines += ["", _fhir_resources_note(results), ""]
    lines += [
        "## Workload",
        "",
        "One order-select request per size: a ketamine draft MedicationRequest selected (full screen), every "
        "prefetch key filled with a searchset Bundle. Background resources are sampled (seeded) from the "
        "MedicationRequests, Conditions, MedicationStatements and AllergyIntolerances of the nine Synthea "
        "patients in `tests/data/fhir-test-data/`, in their proportions "
        + ", ".join(f"{k} {v:.1%}" for k, v in results["generator"]["type_shares"].items())
        + f", leaving out the {results['generator']['excluded_relevant_templates']} resources any value set "
        "recognises; then the same few relevant hits are added to every record (an active clonazepam "
        "statement, an active lamotrigine order, a 2014 myocardial infarction, blood pressures with a raised "
        "latest reading). See bench/generate.py.",
        "",
    ]
    types = sorted({t for p in results["patients"].values() for t in p["counts"]})
    lines += _table(
        ["resources", *types, "prefetch body"],
        [
            [
                f"{int(s):,}",
                *[str(p["counts"].get(t, 0)) for t in types],
                f"{p['prefetch_body_bytes'] / 1e6:.2f} MB",
            ]
            for s, p in results["patients"].items()
        ],
    )
    lines += [
        "",
        "## Latency at concurrency 1",
        "",
        "One request at a time, the three modes' requests interleaved (so background load hits them "
        "alike), each mode over its own keep-alive connection; time from sending the request to reading "
        "the whole response. *Other load* is the CPU (cores) other work used during the size's series. "
        "Percentiles by linear interpolation; with fewer than 100 samples p99 is close to the maximum. "
        "Ratios are to the floor receiving the full-prefetch body of the same size (for the "
        "FHIR fallback, whose own body is small, the ratio shows the cost of fetching compared with "
        "receiving the data).",
        "",
    ]
    rows = []
    for s in sizes:
        for mode in modes:
            lat = results["modes"][mode]["sizes"].get(str(s), {}).get("latency")
            if not lat:
                continue
            ratio = analysis["ratios_to_floor"].get(mode, {}).get(str(s), {})
            non_ok = {k: v for k, v in lat.get("statuses", {}).items() if k != "200"}
            rows.append(
                [
                    f"{s:,}",
                    LABELS[mode],
                    str(lat.get("n", 0)) + (" (time cap)" if lat.get("stopped_by_time_cap") else ""),
                    _f(lat.get("p50_ms")),
                    _f(lat.get("p95_ms")),
                    _f(lat.get("p99_ms")),
                    "-"
                    if mode in FLOORS
                    else " / ".join(_f(ratio.get(k), 1, "x") for k in ("p50", "p95", "p99")),
                    _f(lat.get("other_load_cores"), 2),
                    ", ".join(f"{v}x HTTP {k}" for k, v in non_ok.items()) or "none",
                ]
            )
    lines += _table(
        [
            "resources",
            "mode",
            "n",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "vs floor p50 / p95 / p99",
            "other load",
            "errors",
        ],
        rows,
    )
    if meta.get("service_gc_tuning"):
        lines += [
            "",
            "The floor runs with CPython's default garbage-collector settings; the service freezes its "
            "start-up heap and collects the young generation less eagerly in its workers ("
            + ", ".join(f"`{f}`" for f in meta["service_gc_tuning"])
            + "), which makes its collections during a large parse cheaper than the floor's. Part of a "
            "small p95 ratio at large sizes comes from that tuning, which the floor could have too; the "
            "p50 ratio is the steadier comparison.",
        ]
    lines += [
        "",
        "![p95 latency vs record size](latency.png)",
        "",
        "## Throughput at saturation",
        "",
        f"{meta['concurrency']} client processes, each with a keep-alive connection, sending the same "
        f"request back to back for up to {meta['throughput_seconds']:.0f} s (or "
        f"{meta['throughput_requests']:,} requests). Requests/s counts HTTP 200 answers only. CPU ms per "
        "request comes from /proc (gunicorn workers; sekmet for the FHIR fallback; the client processes "
        f"themselves): client, servers and sekmet share the same {m['nproc']} cores, so the client's share "
        "shows how much it takes from the servers. *By CPU* is the floor's server CPU per request divided by "
        "the mode's (workers plus sekmet): the throughput ratio the CPU cost alone predicts, less sensitive "
        "to other work on the machine than the measured one.",
        "",
    ]
    rows = []
    for s in sizes:
        for mode in modes:
            tp = results["modes"][mode]["sizes"].get(str(s), {}).get("throughput")
            if not tp:
                continue
            cpu = tp.get("cpu_ms_per_request", {})
            non_ok = {k: v for k, v in tp["statuses"].items() if k != "200"}
            rows.append(
                [
                    f"{s:,}",
                    LABELS[mode],
                    _f(tp["rps"]),
                    "-"
                    if mode in FLOORS
                    else _f(analysis["ratios_to_floor"][mode][str(s)]["throughput"], 2, "x")
                    + " ("
                    + _f(analysis["ratios_to_floor"][mode][str(s)]["throughput_by_cpu"], 2, "x")
                    + ")",
                    str(tp["requests"]),
                    _f(tp["latency_under_load"].get("p95_ms")),
                    _f(cpu.get("server workers"), 2),
                    _f(cpu.get("sekmet"), 2) if "sekmet" in cpu else "-",
                    _f(cpu.get("client"), 2),
                    _f(tp["client_cpu_share"] * 100, 0, " %"),
                    _f(tp.get("other_load_cores"), 2),
                    ", ".join(f"{v}x HTTP {k}" for k, v in non_ok.items()) or "none",
                ]
            )
    lines += _table(
        [
            "resources",
            "mode",
            "requests/s",
            "vs floor (by CPU)",
            "requests",
            "p95 under load ms",
            "CPU ms/req workers",
            "CPU ms/req sekmet",
            "CPU ms/req client",
            "client CPU share",
            "other load",
            "errors",
        ],
        rows,
    )
    lines += _throughput_notes(results, sizes)
    lines += _floors_section(results, sizes)
    lines += _scaling_section(results)
    lines += [
        "",
        "## Memory per worker",
        "",
        "Peak resident set (VmHWM) of each gunicorn worker, read from "
        "/proc after each size (so each column includes every smaller size before it), in MB (10^6 bytes).",
        "",
    ]
    lines += [
        "Under load each worker runs up to 4 requests at once (4 threads), so it can hold several parsed "
        "bodies at the same time; the target table also gives the peak after the concurrency-1 series.",
        "",
    ]
    rows = []
    for mode in modes:
        cells = []
        for s in sizes:
            workers = results["modes"][mode]["sizes"].get(str(s), {}).get("worker_memory_after", [])
            cells.append(" / ".join(f"{w.get('VmHWM', 0) * 1024 / MB:.0f}" for w in workers) or "-")
        mem = results["modes"][mode]["memory"]
        master = mem["master"].get("VmHWM", 0) * 1024 / MB
        rows.append([LABELS[mode], *cells, f"{mem['peak_worker_hwm_kb'] * 1024 / MB:.0f}", f"{master:.0f}"])
    lines += _table(
        ["mode", *[f"after {s:,} (each worker)" for s in sizes], "peak worker", "gunicorn master"], rows
    )
    sekmet = results["modes"].get("fhir", {}).get("memory", {}).get("sekmet")
    if sekmet:
        lines += [
            "",
            "sekmet-fhir (the local FHIR server, not part of the service) peaked at "
            + ", ".join(f"{p.get('VmHWM', 0) * 1024 / MB:.0f} MB" for p in sekmet)
            + ".",
        ]
    lines += [
        "",
        "## Growth with record size",
        "",
        "Least-squares line through p50 latency (concurrency 1) and the marginal cost per resource "
        "between consecutive sizes; the log-log exponent is 1 for linear growth, below 1 while a fixed "
        "cost dominates, above 1 for super-linear growth. The last columns give the workers' CPU per "
        "request under load, per resource.",
        "",
    ]
    rows = []
    for mode in modes:
        g = analysis["growth"].get(mode) or {}
        fit = g.get("p50_fit") or {}
        segs = "; ".join(
            f"{x['from']}->{x['to']}: {x['us_per_resource']:.1f} us/res (exp {_f(x['loglog_exponent'], 2)})"
            for x in g.get("segments", [])
        )
        cpu = "; ".join(
            f"{c['size']}: {c['worker_cpu_ms']:.1f} ms ({c['us_per_resource']:.1f} us/res)"
            for c in g.get("worker_cpu_per_request", [])
        )
        rows.append(
            [
                LABELS[mode],
                _f(fit.get("intercept_ms"), 1),
                _f(fit.get("slope_us_per_resource"), 1),
                _f(fit.get("r2"), 3),
                segs or "-",
                cpu or "-",
            ]
        )
    lines += _table(
        [
            "mode",
            "fit: fixed ms",
            "fit: us/resource",
            "R^2",
            "marginal cost per segment",
            "worker CPU per request under load",
        ],
        rows,
    )
    if analysis["cards_prefetch_equal_fhir"]:
        lines += ["", "## Same answer with and without prefetch", ""]
        lines += _table(
            ["resources", "cards (prefetch)", "identical with FHIR fallback"],
            [
                [
                    f"{int(s):,}",
                    "<br>".join(results["modes"]["prefetch"]["sizes"][s]["cards"]) or "(none)",
                    "yes" if ok else "**no**",
                ]
                for s, ok in analysis["cards_prefetch_equal_fhir"].items()
            ],
        )
        loaded = results["modes"]["fhir"]["sekmet"]["loaded"]
        lines += [
            "",
            "sekmet load time (transaction Bundles of PUTs, 500 entries each, strict validation): "
            + ", ".join(f"{int(s):,}: {v['load_s']:.1f} s" for s, v in loaded.items())
            + "; after loading, every search total matched the generated record.",
        ]
    if profile:
        lines += [
            "",
            f"## Where the time goes ({profile['size']:,} resources, full prefetch)",
            "",
            "cProfile over the app in a fresh interpreter (Flask test client, same settings, "
            f"{profile['requests']} requests after 3 warm-ups): "
            f"{profile['wall_ms_per_request']:.1f} ms per request without the profiler, "
            f"{profile['wall_ms_per_request_profiled']:.1f} ms with it. Times below are under the profiler "
            "(inflated; compare shares).",
            "",
            "### Stages (cumulative)",
            "",
        ]
        lines += _stage_table(profile)
        lines += _gc_section(profile)
        lines += ["", "### Top functions by own time", ""]
        lines += _table(
            ["function", "calls/request", "own ms/request", "share", "cumulative ms/request"],
            [
                [
                    f"`{r['function']}`",
                    _f(r["calls_per_request"], 0),
                    _f(r["own_ms_per_request"], 2),
                    _f(r["own_share"] * 100, 1, " %"),
                    _f(r["cum_ms_per_request"], 2),
                ]
                for r in profile["top_own_time"][:20]
            ],
        )
        lines += ["", "### Top service functions by cumulative time", ""]
        lines += _table(
            ["function", "calls/request", "cumulative ms/request", "own ms/request"],
            [
                [
                    f"`{r['function']}`",
                    _f(r["calls_per_request"], 0),
                    _f(r["cum_ms_per_request"], 2),
                    _f(r["own_ms_per_request"], 2),
                ]
                for r in profile["top_cumulative_cds"][:20]
            ],
        )
    small = results.get("profile_small")
    if small:
        lines += [
            "",
            f"## Where the fixed cost goes ({small['size']:,} resources, full prefetch)",
            "",
            f"The same profile of the smallest request ({small['requests']} requests): "
            f"{small['wall_ms_per_request']:.1f} ms per request without the profiler, "
            f"{small['wall_ms_per_request_profiled']:.1f} ms with it. The request's own thread only: the "
            "outbox thread that ships the call's records to the database afterwards is not in it.",
            "",
        ]
        lines += _stage_table(small)
    if results.get("profile_error"):
        lines += [
            "",
            "## Where the time goes",
            "",
            f"The in-process profile failed: `{results['profile_error']}`",
        ]
    lines += [
        "",
        "## Method notes",
        "",
        "- Each mode has its own server process tree, started on a free 127.0.0.1 port and stopped at the "
        "end (SIGTERM to its process group); the FHIR fallback's service instance is separate from the "
        "prefetch one, so their memory figures do not mix.",
        "- The floor and the service receive byte-identical full-prefetch bodies; bodies are encoded once "
        "before timing.",
        "- The FHIR fallback request has no `prefetch` at all; the service fetches Patient, "
        "MedicationStatement, MedicationRequest (with `_include`), Condition, AllergyIntolerance and the "
        "blood-pressure Observations from sekmet-fhir 0.1.1 (its own venv, SQLite, strict validation), "
        "paging with its default page size (`fhir_page_size` = 1,000) and its production time budget (4 s).",
        "- The FHIR fetch floor (`BENCH_FLOOR_FETCH=1` in bench/floor_app.py) receives the same request and "
        "runs the same searches against the same sekmet, as many at once as the service, following every "
        "page and parsing it with `json.loads`, then answers no cards: the fallback's floor is this server's "
        "own time, which no service can go under.",
        "- sekmet runs on the same cores as the service and the client, so the FHIR fallback's throughput is "
        "mostly a measure of this test server, not of a production EHR.",
        "- Raw numbers, including latency under load and per-worker memory, are in `results.json`.",
        "",
    ]
    return "\n".join(lines)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    plot(results, out / "latency.png")
    (out / "REPORT.md").write_text(markdown(results), encoding="utf-8")
