"""Limits on untrusted JSON that the standard parser does not enforce."""

from __future__ import annotations

from typing import Any


def depth_exceeds(value: Any, limit: int) -> bool:
    """Iterative nesting check: a deep body must not exhaust the stack anywhere downstream."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values() if isinstance(child, (dict, list)))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, (dict, list)))
    return False
