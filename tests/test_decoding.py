"""Request bodies and FHIR pages are decoded by msgspec (cds.fhir.decoding): the same values the standard
library gives, and what msgspec refuses is still read the way it always was."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cds.errors import FhirError
from cds.fhir.client import _json_object
from cds.fhir.decoding import decode_json
from tests.support.charts import complex_chart, typical_chart

DATA = Path(__file__).resolve().parent / "data" / "fhir-test-data"


@pytest.mark.parametrize("path", sorted(DATA.glob("*.json")), ids=lambda p: p.name)
def test_real_charts_decode_to_exactly_what_the_standard_library_gives(path: Path) -> None:
    raw = path.read_bytes()
    assert decode_json(raw) == json.loads(raw)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(complex_chart("order-select")),
        json.dumps(typical_chart("order-sign")),
        '{"a": 1, "a": 2}',  # a repeated name: the last one wins, as in json.loads
        '{"big": 123456789012345678901234567890, "neg": -0.0, "exp": 1e400, "tiny": 5e-324}',
        '{"text": "\\u00e9sketamine \\ud83d\\udc8a", "tab": "a\\tb"}',
        '[1, 2.50, "x", null, true, false, {}]',
    ],
    ids=["complex chart", "typical chart", "repeated name", "numbers", "escapes", "array"],
)
def test_values_are_those_of_the_standard_library(text: str) -> None:
    decoded, expected = decode_json(text.encode()), json.loads(text)
    assert json.dumps(decoded) == json.dumps(expected)  # also tells 1 from 1.0 and -0.0 from 0.0


def test_what_msgspec_refuses_is_read_by_the_standard_parser() -> None:
    """Bare NaN tokens and lone surrogates (sloppy senders) do not cost the whole screen."""
    decoded = decode_json(b'{"doseQuantity": {"value": NaN}, "note": "\\ud800", "max": Infinity}')
    assert math.isnan(decoded["doseQuantity"]["value"])
    assert decoded["note"] == "\ufffd"  # no character: the replacement character stands in
    assert decoded["max"] == math.inf


def test_lone_surrogates_become_replacement_characters_anywhere_and_pairs_stay() -> None:
    raw = b'[{"a\\udc00": ["x\\ud800y", {"k": "\\ud83d\\udc8a \\udfff"}]}, "\\ud800", NaN]'
    decoded = decode_json(raw)
    assert decoded[:2] == [{"a\ufffd": ["x\ufffdy", {"k": "\U0001f48a \ufffd"}]}, "\ufffd"]
    assert decode_json(b'"\\ud800"') == "\ufffd"


def test_malformed_and_pathological_json_raise_what_the_edge_expects() -> None:
    with pytest.raises(json.JSONDecodeError):
        decode_json(b'{"hook": ')
    with pytest.raises(json.JSONDecodeError):
        decode_json(b"")
    with pytest.raises(RecursionError):
        decode_json(b"[" * 100_000 + b"]" * 100_000)


def test_a_fhir_page_nested_past_the_parser_is_a_fetch_error_not_a_crash() -> None:
    with pytest.raises(FhirError, match="not JSON"):
        _json_object(b"[" * 100_000 + b"]" * 100_000, "search")
    assert _json_object(b'{"resourceType": "Bundle", "total": NaN}', "search")["resourceType"] == "Bundle"
