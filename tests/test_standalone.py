"""The repository stands alone: nothing in it points outside it, and nothing cites a project tracker.

A reader with only a clone must find every document, script and data file the code and docs mention, so
paths to a folder beside the repository, absolute paths of a development machine and references to
tracker items ("issue 6", "checklist section 3") are not allowed in any file of the repository.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {
    ".py",
    ".md",
    ".yaml",
    ".yml",
    ".json",
    ".toml",
    ".sh",
    ".txt",
    ".cfg",
    ".ini",
    ".csv",
    ".mako",
}
TEXT_NAMES = {"Dockerfile", "Makefile", ".dockerignore", ".gitignore", "run"}
SKIPPED_DIRS = {
    ".git",
    ".venv",
    "build",
    "dist",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "mutants",  # `make mutation`'s working copy (ignored by git)
}
FORBIDDEN = {
    "a path to a folder beside the repository": re.compile(
        r"\.\./shared\b|(?<![\w.])shared/(clinical|design|cds-hooks|fhir-test-data|seeds)\b"
    ),
    "an absolute path of a development machine": re.compile(r"/work/(shared|main|wt)\b"),
    "a tracker reference": re.compile(
        r"\bissues? #?\d+\b|\bchecklist (section|row)s?\b|\bevidence table\b", re.IGNORECASE
    ),
}
THIS_FILE = Path(__file__).resolve()


def repository_text_files() -> Iterator[Path]:
    """Every text file of the repository; hidden folders (virtual environments, caches) except .ci."""
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = sorted(
            name
            for name in subfolders
            if name not in SKIPPED_DIRS
            and not name.endswith(".egg-info")
            and (not name.startswith(".") or name == ".ci")
        )
        for name in sorted(files):
            path = Path(folder) / name
            if path != THIS_FILE and (path.suffix in TEXT_SUFFIXES or name in TEXT_NAMES):
                yield path


def test_nothing_points_outside_the_repository_or_at_a_tracker() -> None:
    found = []
    checked = 0
    for path in repository_text_files():
        checked += 1
        text = path.read_text(encoding="utf-8", errors="replace")
        for what, pattern in FORBIDDEN.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {what}: {match.group(0)!r}")
    assert checked > 100, "the walk found too few files to mean anything"
    assert not found, "\n".join(found)


def test_the_check_recognises_each_kind() -> None:
    samples = {
        "see ../shared/clinical/evidence.md": "a path to a folder beside the repository",
        "read /work/shared/README.md": "an absolute path of a development machine",
        "(issue 4, item 5)": "a tracker reference",
        "checklist section 3": "a tracker reference",
        "the evidence table's proposal": "a tracker reference",
    }
    for text, kind in samples.items():
        assert FORBIDDEN[kind].search(text), text
    for clean in (
        "fhir_profiles/valuesets/../tables/x.json",
        "OperationOutcome.issue[0]",
        "docs/evidence.md",
    ):
        assert not any(pattern.search(clean) for pattern in FORBIDDEN.values()), clean
