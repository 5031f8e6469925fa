"""`ketamine-cds serve | screen | report | migrate | purge | worklist`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from importlib import metadata
from pathlib import Path
from typing import Any

import requests

from cds.config import Settings, load_settings
from cds.errors import BadRequest, CdsError, ConfigError, operation_outcome
from cds.web.validation import read_json_object


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.dev:
        overrides["dev_mode"] = True
    if args.workers:
        overrides["workers"] = args.workers
    settings = load_settings(overrides=overrides)

    from cds.web.serving import draining, prepare_work_dir, serve

    prepare_work_dir(settings)  # first: temp files and the metrics mode are settled before any import

    from flask import Flask

    from cds.app import create_app

    def build(settings: Settings, maintenance: bool) -> Flask:
        return create_app(settings, maintenance=maintenance, draining=draining)

    serve(settings, args.host, args.port, build)
    return 0


def _screen(args: argparse.Namespace) -> int:
    from cds.clinical.knowledge import load_knowledge
    from cds.clinical.screening import Screener

    settings = load_settings(overrides={"dev_mode": True})
    knowledge = load_knowledge(settings.policy_file)
    try:
        raw = Path(args.request).read_bytes()
    except OSError as exc:
        raise BadRequest(f"cannot read {args.request}: {exc}") from exc
    body = read_json_object(raw, knowledge.request_validator, settings)
    service = next((s for s in knowledge.services.values() if s.hook == body["hook"]), None)
    if service is None:
        raise BadRequest(f"no service for hook {body['hook']!r}")
    now = datetime.now(UTC)
    if args.now:
        now = datetime.combine(date.fromisoformat(args.now), time(12, 0), tzinfo=UTC)
    screener = Screener(knowledge, settings, requests.Session(), lambda: now)
    result = screener.screen(service, body)
    json.dump({"cards": result.cards}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _open_store(settings: Settings) -> Any:
    from cds.storage.store import Store

    return Store.open(
        settings.database_url,
        connect_timeout_s=settings.db_connect_timeout_s,
        statement_timeout_s=settings.db_statement_timeout_s,
    )


def _report(args: argparse.Namespace) -> int:
    from cds.clinical.knowledge import override_displays
    from cds.report import render_report
    from cds.storage.analytics import override_report

    settings = load_settings(overrides={"dev_mode": True})
    store = _open_store(settings)
    try:
        store.migrate()
        since = datetime.fromisoformat(args.since).replace(tzinfo=UTC) if args.since else None
        text = render_report(override_report(store, since, displays=override_displays()), args.format)
    finally:
        store.close()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _migrate(_args: argparse.Namespace) -> int:
    settings = load_settings(overrides={"dev_mode": True})
    store = _open_store(settings)
    try:
        print(store.migrate())
    finally:
        store.close()
    return 0


def _purge(args: argparse.Namespace) -> int:
    settings = load_settings(overrides={"dev_mode": True})
    days = args.older_than_days or settings.audit_retention_days
    store = _open_store(settings)
    try:
        store.migrate()
        print(f"removed {store.purge(days)} records older than {days} days")
    finally:
        store.close()
    return 0


def _worklist(args: argparse.Namespace) -> int:
    from cds.worklist.command import MAX_DAYS, run_worklist
    from cds.worklist.config import load_worklist_config

    try:
        first_day = date.fromisoformat(args.from_date)
    except ValueError:
        raise BadRequest(f"--from must be a date (YYYY-MM-DD), got {args.from_date!r}") from None
    if not 1 <= args.days <= MAX_DAYS:
        raise BadRequest(f"--days must be from 1 to {MAX_DAYS}")
    config = load_worklist_config(
        Path(args.config) if args.config else None,
        fhir_server=args.fhir_server,
        token=args.token,
        allow_server=args.allow_server,
    )
    return run_worklist(
        config, first_day, args.days, args.format, Path(args.output) if args.output else None, sys.stderr
    )


def _version() -> str:
    """The installed distribution's version (one source of truth: pyproject.toml)."""
    try:
        return metadata.version("ketamine-cds")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ketamine-cds", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the CDS Hooks service under gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int)
    serve.add_argument(
        "--dev",
        action="store_true",
        help="development mode: no client authentication, plain-http FHIR allowed",
    )
    serve.set_defaults(func=_serve)
    screen = sub.add_parser("screen", help="screen one CDS Hooks request offline and print the cards")
    screen.add_argument("request", help="a CDS Hooks request JSON file")
    screen.add_argument("--now", help="screen as of this date (YYYY-MM-DD)")
    screen.set_defaults(func=_screen)
    report = sub.add_parser("report", help="override analytics per rule")
    report.add_argument("--since", help="only cards issued from this date (YYYY-MM-DD)")
    report.add_argument("--format", choices=("html", "csv", "json"), default="html")
    report.add_argument("--output", help="write to this file instead of standard output")
    report.set_defaults(func=_report)
    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(func=_migrate)
    purge = sub.add_parser("purge", help="delete audit, card and feedback records past the retention period")
    purge.add_argument("--older-than-days", type=int, help="default: KETAMINE_CDS_AUDIT_RETENTION_DAYS")
    purge.set_defaults(func=_purge)
    worklist = sub.add_parser(
        "worklist",
        help="screen every ketamine and esketamine session of the coming days ahead (see docs/worklist.md)",
    )
    worklist.add_argument("--fhir-server", help="the FHIR server's base URL (else fhir_server in --config)")
    worklist.add_argument("--config", help="the worklist configuration file (YAML): server, auth, time zone")
    worklist.add_argument(
        "--token",
        help="a bearer access token (prefer the environment variable KETAMINE_WORKLIST_TOKEN: "
        "command lines are visible to other users)",
    )
    worklist.add_argument(
        "--allow-server",
        action="store_true",
        help="trust this server although it is plain http or on a private network (a site's own server)",
    )
    worklist.add_argument("--from", dest="from_date", required=True, help="first day (YYYY-MM-DD)")
    worklist.add_argument("--days", type=int, default=1, help="number of days (default 1)")
    worklist.add_argument("--format", choices=("html", "csv", "json"), default="html")
    worklist.add_argument("--output", help="write to this file instead of standard output")
    worklist.set_defaults(func=_worklist)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        # one line naming what to fix: no traceback, whatever the command
        print(f"ketamine-cds: configuration error: {_one_line(exc.message)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file named in the settings that cannot be read, a port already taken
        print(f"ketamine-cds: cannot start: {_one_line(f'{type(exc).__name__}: {exc}')}", file=sys.stderr)
        return 2
    except CdsError as exc:
        json.dump(operation_outcome(exc.issues), sys.stderr, indent=2)
        sys.stderr.write("\n")
        return 2
    return result


if __name__ == "__main__":
    raise SystemExit(main())
