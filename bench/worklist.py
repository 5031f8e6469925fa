"""Benchmark of `ketamine-cds worklist`: N patients with a session in the window, against a local
sekmet-fhir server, wall time of the whole run (discovery + screening + rendering all three formats).

    .venv/bin/python -m bench.worklist                 # 200 patients, concurrency 8 (the target: < 60 s)
    .venv/bin/python -m bench.worklist --patients 50 --concurrency 4

Each patient has a chart of realistic size for the screen (30 conditions, 15 medication orders, some with a
benzodiazepine or a myocardial infarction) and one or two sessions in a three-day window; a few ketamine
appointments fall outside the window and some appointments are not ketamine sessions. Results go to
bench/results/worklist.md and bench/results/worklist.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cds.worklist.command import build_worklist
from cds.worklist.config import load_worklist_config
from cds.worklist.render import render_worklist
from tests.support import worklist_data as wd
from tests.support.fhir_server import running_fhir_server

RESULTS = Path(__file__).resolve().parent / "results"
FIRST_DAY = date(2026, 12, 2)
DAYS = 3
CONDITIONS = [
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertension"),
    ("35489007", "Depression"),
]


def _chart(index: int, rng: random.Random) -> list[dict[str, Any]]:
    pid = f"bench-wl-{index:04d}"
    day = FIRST_DAY.day + index % DAYS
    hour = 8 + index % 9
    resources: list[dict[str, Any]] = [
        wd.patient(pid, f"Given{index}", f"Family{index}"),
        wd.appointment(
            f"{pid}-a1", pid, f"2026-12-{day:02d}T{hour:02d}:00:00+00:00", description="Ketamine infusion"
        ),
        wd.appointment(f"{pid}-a2", pid, "2026-12-20T09:00:00+00:00", description="Ketamine infusion"),
        wd.appointment(f"{pid}-a3", pid, f"2026-12-{day:02d}T07:00:00+00:00", description="Blood test"),
    ]
    if index % 10 == 0:  # a second session in the window, from the order's timing
        resources.append(
            wd.ketamine_order(f"{pid}-k", pid, event=[f"2026-12-{FIRST_DAY.day + 2:02d}T15:00:00Z"])
        )
    for n in range(30):
        code, display = CONDITIONS[n % len(CONDITIONS)]
        resources.append(
            {
                "resourceType": "Condition",
                "id": f"{pid}-c{n}",
                "code": {"coding": [{"system": wd.SNOMED, "code": code, "display": display}]},
                "subject": {"reference": f"Patient/{pid}"},
                "onsetDateTime": f"20{10 + n % 15:02d}-0{1 + n % 9}-15",
            }
        )
    if rng.random() < 0.1:
        resources.append(wd.myocardial_infarction(f"{pid}-mi", pid, "2026-10-01"))
    for n in range(15):
        resources.append(
            wd.medication_request(
                f"{pid}-m{n}", pid, "310965", "ibuprofen 200 MG Oral Tablet", status="completed"
            )
        )
    if rng.random() < 0.3:
        resources.append(wd.clonazepam(f"{pid}-bz", pid))
    return resources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/results alone")
    args = parser.parse_args()
    rng = random.Random(14)
    with running_fhir_server(load_patients=False) as server:
        started = time.monotonic()
        resources = 0
        batch: list[dict[str, Any]] = []
        for index in range(args.patients):
            batch += _chart(index, rng)
            if len(batch) >= 1000 or index == args.patients - 1:
                wd.load(server.base_url, server.token, batch)
                resources += len(batch)
                batch = []
        load_s = time.monotonic() - started
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "worklist.yaml"
            path.write_text(
                json.dumps(
                    {"fhir_server": server.base_url, "allow_server": True, "concurrency": args.concurrency}
                ),
                encoding="utf-8",
            )
            config = load_worklist_config(path, token=server.token)
            started = time.monotonic()
            cpu_started = time.process_time()
            worklist = build_worklist(
                config, FIRST_DAY, DAYS, clock=lambda: datetime(2026, 12, 1, 12, tzinfo=UTC)
            )
            sizes = {fmt: len(render_worklist(worklist, fmt)) for fmt in ("html", "csv", "json")}
            wall_s = time.monotonic() - started
            cpu_s = time.process_time() - cpu_started
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "patients_in_window": len(worklist.rows),
        "sessions": worklist.session_count,
        "critical": worklist.critical_count,
        "not_screened": worklist.not_screened,
        "resources_on_server": resources,
        "concurrency": args.concurrency,
        "load_s": round(load_s, 1),
        "wall_s": round(wall_s, 2),
        "client_cpu_s": round(cpu_s, 2),
        "output_bytes": sizes,
        "target": "200 patients in under 60 s",
        "pass": worklist.not_screened == 0 and len(worklist.rows) >= 200 and wall_s < 60,
    }
    print(json.dumps(result, indent=2))
    if args.no_write:
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "worklist.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (RESULTS / "worklist.md").write_text(
        "# Worklist benchmark\n\n"
        f"`python -m bench.worklist --patients {args.patients} --concurrency {args.concurrency}` on "
        f"{result['machine']}, commit {result['commit']}, {result['date']}.\n\n"
        f"- {result['patients_in_window']} patients, {result['sessions']} sessions in the window "
        f"({resources} resources on a local sekmet-fhir server, loaded in {result['load_s']} s)\n"
        f"- whole run (find sessions, screen every patient, render HTML, CSV and JSON): "
        f"**{result['wall_s']} s** wall, {result['client_cpu_s']} s CPU in the worklist process\n"
        f"- {result['critical']} critical, {result['not_screened']} not screened\n"
        f"- target {result['target']}: **{'pass' if result['pass'] else 'FAIL'}**\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
