"""Values the whole suite shares: where the repository is, the pinned clock, the service ids."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)  # every screen in the suite runs on this date
SERVICES = {
    "patient-view": "ketamine-patient-view",
    "order-select": "ketamine-order-select",
    "order-sign": "ketamine-order-sign",
}
CLOSED_PORT = "http://127.0.0.1:9/fhir"  # nothing listens: a FHIR fallback fails fast, never leaves the host
# Production mode refuses a pseudonym key under 32 bytes; tests use a fixed one so hashes are comparable.
TEST_HASH_KEY = "test-key-padded-to-the-32-byte-production-minimum"


def property_examples(full: int) -> int:
    """Examples for a Hypothesis property: all of them normally; a tenth (at least 20, the same
    derandomised first ones) under a mutation run (mutmut sets MUTANT_UNDER_TEST), where a property that
    takes seconds is paid again for every surviving mutant and the hand-written cases do the killing."""
    return max(full // 10, 20) if os.environ.get("MUTANT_UNDER_TEST") else full
