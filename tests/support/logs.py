"""Every log record of the test run, and the check that none of them carries patient data or a token.

conftest.py attaches `LOG_CAPTURE` to the root logger (at DEBUG, so library loggers are kept too) when the
run starts, and checks everything captured when the run ends: the run fails if a line contains

* the id of a test patient: the nine Synthea patients (tests/data/fhir-test-data) and the scenario
  patient of tests/support/builders.py;
* a test patient's name: every given and family name in their Patient resources, as a whole word;
* any string a test registered in `SENSITIVE` (client JWTs, Authorization headers, FHIR tokens);
* anything shaped like a JWT: three base64url segments joined by dots, over 40 characters.
"""

from __future__ import annotations

import json
import logging
import re

from tests.support.synthea import identifying_strings

SENSITIVE: set[str] = set()
JWT_SHAPED = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
MIN_SENSITIVE_CHARS = 8  # shorter registered strings would match by chance (and are no real secret)
_PLAIN_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a broken format string still must not hide the raw message
            text = str(record.msg)
        extra = {k: v for k, v in record.__dict__.items() if k not in _PLAIN_RECORD_KEYS}
        self.lines.append(f"{record.name} {text} {json.dumps(extra, default=str)}")


LOG_CAPTURE = _Capture()


def leaks(lines: list[str]) -> list[str]:
    """Each offending line, with what it leaks (secrets and JWTs in the line shown are redacted)."""
    ids, names = identifying_strings()
    name_pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in sorted(names, key=len)[::-1]) + r")\b")
    secrets = sorted(s for s in SENSITIVE if len(s) >= MIN_SENSITIVE_CHARS)
    found = []
    for number, line in enumerate(lines):
        reasons = [f"patient id {pid}" for pid in ids if pid in line]
        reasons += [f"patient name {m.group(1)!r}" for m in name_pattern.finditer(line)]
        leaked = [s for s in secrets if s in line]
        reasons += [f"registered secret ({len(s)} chars)" for s in leaked]
        shaped = [m.group(0) for m in JWT_SHAPED.finditer(line) if len(m.group(0)) > 40]
        reasons += [f"JWT-shaped ({len(t)} chars)" for t in shaped]
        if reasons:
            shown = line
            for secret in (*leaked, *shaped):
                shown = shown.replace(secret, "<redacted>")
            found.append(f"line {number}: {'; '.join(dict.fromkeys(reasons))} in: {shown[:200]}")
    return found
