"""Where the knowledge files (hooks, rules, FHIR profiles) are: one answer for every module."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def knowledge_root() -> Path:
    """Inside an installed wheel the knowledge sits in cds/_knowledge; in a checkout, at the repo top."""
    packaged = _PACKAGE / "_knowledge"
    if (packaged / "rules").is_dir():
        return packaged
    return _PACKAGE.parent
