"""ketamine-cds: a CDS Hooks 2.0 service screening for ketamine and esketamine treatment.

`create_app` (cds.app) builds the Flask app; `ketamine-cds` (cds.cli) serves it, screens a request
offline, or reports override analytics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(*args: Any, **kwargs: Any) -> Flask:
    from cds.app import create_app as factory

    return factory(*args, **kwargs)


__all__ = ["create_app"]
