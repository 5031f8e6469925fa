"""Mutation score after `mutmut run`: killed / (all - equivalent), per module and per area, and the survivors.

Reads `mutmut results --all true` and the equivalent mutants listed (with their reason) in
tests/mutation/equivalent.md. A mutant that timed out counts as killed (the tests noticed); one that no
selected test reaches ("no tests") counts as a survivor. Exit status 1 when an area is below the target.

    python tools/mutation_report.py [--target 90] [--diffs]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = ROOT / "tests" / "mutation" / "equivalent.md"
AREAS = {
    "clinical core": ("cds.clinical.",),
    "authentication": ("cds.web.auth.",),
}
KILLED = {"killed", "timeout", "caught by type check"}
_LINE = re.compile(r"^\s+(?P<name>\S+__mutmut_\d+): (?P<status>.+)$")
_EQUIVALENT = re.compile(r"^\s*[-*]\s+`(?P<name>[^`]+__mutmut_\d+)`")


def module_of(mutant: str) -> str:
    """cds.clinical.engine.x_months_before__mutmut_3 -> cds.clinical.engine (methods use 'xǁClassǁ')."""
    head = mutant.split("__mutmut_", maxsplit=1)[0]
    parts = head.split(".")
    while parts and (parts[-1].startswith(("x_", "xǁ")) or not parts[-1]):
        parts.pop()
    return ".".join(parts)


def equivalents() -> set[str]:
    if not EQUIVALENT_FILE.exists():
        return set()
    text = EQUIVALENT_FILE.read_text(encoding="utf-8")
    return {m.group("name") for line in text.splitlines() if (m := _EQUIVALENT.match(line))}


def results() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = (_LINE.match(line) for line in out.splitlines())
    return {m.group("name"): m.group("status").strip() for m in found if m}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=90.0, help="minimum score per area, in percent")
    parser.add_argument("--diffs", action="store_true", help="print each survivor's diff")
    args = parser.parse_args()

    statuses = results()
    if not statuses:
        print("no mutmut results: run `make mutation` (or `mutmut run`) first")
        return 1
    equivalent = equivalents()
    unknown = sorted(equivalent - set(statuses))
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[tuple[str, str]] = []
    for name, status in sorted(statuses.items()):
        tally = by_module[module_of(name)]
        if status == "not checked":  # an interrupted or partial run
            tally["pending"] += 1
            continue
        if name in equivalent:
            tally["equivalent"] += 1
            continue
        tally["scored"] += 1
        if status in KILLED:
            tally["killed"] += 1
        elif status != "skipped":
            survivors.append((name, status))
        else:
            tally["scored"] -= 1
            tally["skipped"] += 1

    print(f"{'module':34} {'killed':>7} {'scored':>7} {'score':>7} {'equiv.':>7} {'not run':>8}")
    for module, tally in sorted(by_module.items()):
        score = 100.0 * tally["killed"] / tally["scored"] if tally["scored"] else 100.0
        print(
            f"{module:34} {tally['killed']:7} {tally['scored']:7} {score:6.1f}% "
            f"{tally['equivalent']:7} {tally['pending']:8}"
        )
    failed = False
    for area, prefixes in AREAS.items():
        tallies = [t for m, t in by_module.items() if (m + ".").startswith(prefixes)]
        killed = sum(t["killed"] for t in tallies)
        scored = sum(t["scored"] for t in tallies)
        pending = sum(t["pending"] for t in tallies)
        score = 100.0 * killed / scored if scored else 100.0
        failed |= score < args.target or pending > 0
        print(
            f"{area}: {killed}/{scored} non-equivalent mutants killed = {score:.1f}% "
            f"(target {args.target:g}%){f'; {pending} not run yet' if pending else ''}"
        )
    print(f"\nsurvivors ({len(survivors)}):")
    for name, status in survivors:
        print(f"  {name}: {status}")
        if args.diffs:
            diff = subprocess.run(
                [sys.executable, "-m", "mutmut", "show", name],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            print("\n".join("      " + line for line in diff.splitlines()[1:]))
    if unknown:
        print(f"\nlisted as equivalent but not produced by this run ({len(unknown)}): {', '.join(unknown)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
