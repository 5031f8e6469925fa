"""Reading the service's own data files: YAML through libyaml, JSON Schemas checked once per process.

Start-up (and every test that loads a site policy of its own) spent most of its time in the pure-Python
YAML parser and in checking our JSON Schemas against the meta-schema again for every load.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

# The C parser when PyYAML was built with libyaml (the wheels are); the same safe subset either way.
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """YAML text to Python values, safe tags only."""
    return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader, C or Python


def schema_validator(path: Path) -> Draft202012Validator:
    """A validator for the JSON Schema at `path`, the schema itself checked on first use (per version of
    the file). Raises OSError, ValueError or jsonschema.SchemaError."""
    stat = path.stat()
    return _validator(path.resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _validator(path: Path, _mtime_ns: int, _size: int) -> Draft202012Validator:
    schema = json.loads(path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)
