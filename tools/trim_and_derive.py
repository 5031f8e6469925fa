"""Turn Synthea patient bundles into the FHIR test patients in tests/data/fhir-test-data.

    python tools/trim_and_derive.py SYNTHEA_FHIR_DIR [NAME_PREFIX ...] [--out DIR]
    python tools/trim_and_derive.py --check [--out DIR]

For each patient (a Synthea transaction Bundle whose file name starts with NAME_PREFIX; by default the
patients already committed) it writes two transaction Bundles into DIR (default tests/data/fhir-test-data):

* `<stem>.trimmed.json`: only the resource types the service reads, or that those resources point at
  (KEPT_TYPES). Every entry becomes `PUT <Type>/<id>` and every `urn:uuid:` reference becomes
  `<Type>/<id>`, so a FHIR server stores the resources under ids known in advance. A reference to a
  resource that was dropped is removed (with the element holding it) and counted in the summary.
* `<stem>.medicationstatements.json`: one MedicationStatement per distinct RxNorm code per patient,
  derived from that patient's MedicationRequests (Synthea writes none). The statement is `active` when
  the latest request is active, else `completed`; it takes its period, date asserted, dosage and
  `derivedFrom` (the last three requests) from the requests, and is tagged
  `urn:example:fixture|derived-from-medicationrequest`.

`--check` re-derives both files from the trimmed bundles already in DIR (trimming is idempotent, and the
statements depend only on the trimmed requests) and fails if either differs by a single byte: the
committed test data is what this script makes. Provenance: tests/data/fhir-test-data/PROVENANCE.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "data" / "fhir-test-data"
TRIMMED = ".trimmed.json"
STATEMENTS = ".medicationstatements.json"
KEPT_TYPES = frozenset(
    {
        "Patient",
        "Organization",
        "Location",
        "Practitioner",
        "PractitionerRole",
        "Encounter",
        "Condition",
        "MedicationRequest",
        "Medication",
        "AllergyIntolerance",
    }
)
FIXTURE_TAG = {
    "system": "urn:example:fixture",
    "code": "derived-from-medicationrequest",
    "display": "Derived from Synthea MedicationRequest by the research trim script",
}
JSON = dict[str, Any]


@dataclass
class Derived:
    stem: str
    trimmed: JSON
    statements: JSON
    dropped_references: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        counts = Counter(entry["resource"]["resourceType"] for entry in self.trimmed["entry"])
        kept = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
        dropped = dict(self.dropped_references) or "none"
        return (
            f"{self.stem}: {kept}; {len(self.statements['entry'])} MedicationStatements derived; "
            f"references to dropped resources removed: {dropped}"
        )


def _remove_references(node: Any, rewrite: Callable[[str], str | None]) -> bool:
    """Rewrite every `reference` string in place; False when this node must go (its reference did)."""
    if isinstance(node, dict):
        for key in list(node):
            value = node[key]
            if key == "reference" and isinstance(value, str):
                rewritten = rewrite(value)
                if rewritten is None:
                    return False
                node[key] = rewritten
            elif not _remove_references(value, rewrite):
                del node[key]
    elif isinstance(node, list):
        node[:] = [item for item in node if _remove_references(item, rewrite)]
    return True


def trim(bundle: JSON) -> tuple[list[JSON], Counter[str]]:
    """The kept entries as PUTs with stable references, and the dropped references by resource type."""
    target = {
        entry["fullUrl"]: f"{entry['resource']['resourceType']}/{entry['resource']['id']}"
        for entry in bundle["entry"]
    }
    kept = [
        json.loads(json.dumps(entry))  # a deep copy: the source bundle is not changed
        for entry in bundle["entry"]
        if entry["resource"]["resourceType"] in KEPT_TYPES
    ]
    kept_targets = {target[entry["fullUrl"]] for entry in kept}
    dropped: Counter[str] = Counter()

    def rewrite(reference: str) -> str | None:
        if not reference.startswith("urn:uuid:"):
            return reference  # already `Type/id`, or a conditional reference: left as it is
        resolved = target.get(reference)
        if resolved in kept_targets:
            return resolved
        dropped[(resolved or reference).split("/")[0]] += 1
        return None

    for entry in kept:
        _remove_references(entry["resource"], rewrite)
    return [_put(entry["resource"]) for entry in kept], dropped


def _put(resource: JSON) -> JSON:
    """A transaction entry that stores `resource` under its own id."""
    kind, rid = resource["resourceType"], resource["id"]
    return {
        "fullUrl": f"urn:uuid:{rid}",
        "resource": resource,
        "request": {"method": "PUT", "url": f"{kind}/{rid}"},
    }


def derive_statements(entries: Sequence[JSON]) -> list[JSON]:
    """One MedicationStatement per RxNorm code (first coding), from the patient's MedicationRequests."""
    patient = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "Patient")
    subject = {"reference": f"Patient/{patient['id']}"}
    requests = sorted(
        (
            e["resource"]
            for e in entries
            if e["resource"]["resourceType"] == "MedicationRequest"
            and "medicationCodeableConcept" in e["resource"]
        ),
        key=lambda request: request.get("authoredOn", ""),
    )
    by_code: dict[str, list[JSON]] = {}
    for request in requests:
        by_code.setdefault(request["medicationCodeableConcept"]["coding"][0]["code"], []).append(request)
    statements = []
    for history in by_code.values():
        first, latest = history[0], history[-1]
        active = latest.get("status") == "active"
        period = {"start": first.get("authoredOn")}
        if not active:
            period["end"] = latest.get("authoredOn")
        statement: JSON = {
            "resourceType": "MedicationStatement",
            "id": f"ms-{latest['id']}",
            "meta": {"tag": [dict(FIXTURE_TAG)]},
            "status": "active" if active else "completed",
            "medicationCodeableConcept": latest["medicationCodeableConcept"],
            "subject": dict(subject),
            "effectivePeriod": period,
            "dateAsserted": latest.get("authoredOn"),
            "informationSource": dict(subject),
            "derivedFrom": [{"reference": f"MedicationRequest/{r['id']}"} for r in history[-3:]],
        }
        if latest.get("dosageInstruction"):
            statement["dosage"] = latest["dosageInstruction"]
        statements.append(_put(statement))
    return statements


def derive(stem: str, bundle: JSON) -> Derived:
    entries, dropped = trim(bundle)
    return Derived(
        stem=stem,
        trimmed={"resourceType": "Bundle", "type": "transaction", "entry": entries},
        statements={"resourceType": "Bundle", "type": "transaction", "entry": derive_statements(entries)},
        dropped_references=dropped,
    )


def dumps(bundle: JSON) -> str:
    """The committed files' exact form: compact, ASCII-escaped, no trailing newline."""
    return json.dumps(bundle, separators=(",", ":"))


def _read(path: Path) -> JSON:
    data: JSON = json.loads(path.read_text(encoding="utf-8"))
    return data


def committed_stems(out_dir: Path) -> list[str]:
    return sorted(path.name.removesuffix(TRIMMED) for path in out_dir.glob(f"*{TRIMMED}"))


def check(out_dir: Path) -> list[str]:
    """Files in `out_dir` that this script would not reproduce from the trimmed bundles there."""
    differences = []
    for stem in committed_stems(out_dir):
        derived = derive(stem, _read(out_dir / f"{stem}{TRIMMED}"))
        for suffix, bundle in ((TRIMMED, derived.trimmed), (STATEMENTS, derived.statements)):
            path = out_dir / f"{stem}{suffix}"
            if not path.exists() or path.read_text(encoding="utf-8") != dumps(bundle):
                differences.append(path.name)
    return differences


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path, help="folder of Synthea FHIR transaction bundles")
    parser.add_argument("names", nargs="*", help="file-name prefixes of the patients to take")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT.relative_to(ROOT)}"
    )
    parser.add_argument("--check", action="store_true", help="verify the committed files, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        differences = check(args.out)
        for name in differences:
            print(f"not reproduced: {name}", file=sys.stderr)
        return 1 if differences else 0
    if args.source is None:
        parser.error("give the Synthea output folder, or --check")
    # By default, the patients already committed (file stems are `<Given>_<Family>_<short id>`).
    names = args.names or [stem.rsplit("_", 1)[0] for stem in committed_stems(DEFAULT_OUT)]
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        matches = sorted(args.source.glob(f"{name}*.json"))
        if not matches:
            parser.error(f"no bundle starting with {name!r} in {args.source}")
        source = matches[0]
        derived = derive(source.stem, _read(source))
        (args.out / f"{source.stem}{TRIMMED}").write_text(dumps(derived.trimmed), encoding="utf-8")
        (args.out / f"{source.stem}{STATEMENTS}").write_text(dumps(derived.statements), encoding="utf-8")
        print(derived.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
