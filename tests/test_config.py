"""Strict configuration: a mistake stops start-up with one line naming the variable, never a traceback.

Covers what an operations team gets wrong in practice: a misspelt variable (the replica would otherwise run
on its own SQLite file), an empty or short pseudonym key, a shared cache with per-replica databases and no
key, `migrate` without the rights to create tables.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from cds.cli import main
from cds.config import MIN_AUDIT_KEY_BYTES, load_settings
from cds.errors import ConfigError
from cds.storage.store import Store
from tests.support.backends import fresh_postgres_schema, postgres_url_or_skip
from tests.support.faults import KETAMINE_CDS, proxied_postgres, server_env

LONG_KEY = "k" * MIN_AUDIT_KEY_BYTES
PRODUCTION = {
    "KETAMINE_CDS_PUBLIC_BASE_URL": "https://cds.example.org",
    "KETAMINE_CDS_TRUSTED_ISSUERS": '[{"iss": "https://ehr.example.org", "jwks_url": "https://ehr.example.org/jwks"}]',
}


def test_a_misspelt_variable_names_the_closest_setting() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(environ={"KETAMINE_CDS_DATABSE_URL": "postgresql://db/cds"})
    assert str(excinfo.value) == (
        "KETAMINE_CDS_DATABSE_URL is not a setting of this service; did you mean KETAMINE_CDS_DATABASE_URL?"
    )


def test_an_unknown_variable_with_no_close_name_still_stops() -> None:
    with pytest.raises(ConfigError, match=r"^KETAMINE_CDS_COLOUR_SCHEME is not a setting of this service$"):
        load_settings(environ={"KETAMINE_CDS_COLOUR_SCHEME": "dark"})


def test_test_and_ci_variables_are_not_settings_and_pass() -> None:
    env = {"KETAMINE_CDS_TEST_REDIS_URL": "x", "KETAMINE_CDS_CI_PORT": "1", "KETAMINE_CDS_DEV_MODE": "1"}
    assert load_settings(environ=env).dev_mode


@pytest.mark.parametrize("dev", ["1", "0"])
def test_an_empty_audit_key_is_always_refused(dev: str) -> None:
    env = {"KETAMINE_CDS_DEV_MODE": dev, "KETAMINE_CDS_AUDIT_HASH_KEY": "", **PRODUCTION}
    with pytest.raises(ConfigError, match="KETAMINE_CDS_AUDIT_HASH_KEY is empty"):
        load_settings(environ=env)


def test_production_needs_a_long_audit_key() -> None:
    with pytest.raises(ConfigError, match="31 bytes: production needs at least 32"):
        load_settings(environ={"KETAMINE_CDS_AUDIT_HASH_KEY": "k" * 31, **PRODUCTION})
    assert load_settings(environ={"KETAMINE_CDS_AUDIT_HASH_KEY": LONG_KEY, **PRODUCTION}).audit_hash_key


def test_shared_redis_with_local_sqlite_needs_an_explicit_key() -> None:
    env = {"KETAMINE_CDS_REDIS_URL": "redis://cache:6379/0", **PRODUCTION}
    with pytest.raises(ConfigError, match="must be set when Redis is shared"):
        load_settings(environ=env)
    env["KETAMINE_CDS_DATABASE_URL"] = "postgresql://db/cds"  # the key is then generated and stored there
    assert load_settings(environ=env).audit_hash_key is None


def test_generated_key_is_stored_once_and_shared() -> None:
    """No key configured: one is generated in the shared database and every replica, and every restart,
    reads the same one."""
    with fresh_postgres_schema() as url:
        first, second = Store.open(url), Store.open(url)
        try:
            first.migrate()
            key = first.audit_key()
            assert len(key) >= MIN_AUDIT_KEY_BYTES
            assert second.audit_key() == key
        finally:
            first.close()
            second.close()
        restarted = Store.open(url)
        try:
            assert restarted.audit_key() == key
        finally:
            restarted.close()


def _run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KETAMINE_CDS), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"DATABSE_URL": "postgresql://db/cds"}, "did you mean KETAMINE_CDS_DATABASE_URL?"),
        ({"AUDIT_HASH_KEY": ""}, "KETAMINE_CDS_AUDIT_HASH_KEY is empty"),
        ({"WORKERS": "two"}, "KETAMINE_CDS_WORKERS must be a whole number"),
        (
            {"DATABASE_URL": "mysql://db/cds"},
            "KETAMINE_CDS_DATABASE_URL must be a sqlite:/// or postgresql://",
        ),
        ({"WORK_DIR": "/proc/no-such-dir"}, "KETAMINE_CDS_WORK_DIR '/proc/no-such-dir' is not a writable"),
    ],
)
def test_serve_stops_with_one_line(settings: dict[str, str], expected: str, tmp_path: Path) -> None:
    result = _run_cli(["serve", "--dev", "--port", "1"], server_env(**settings), tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_stops_within_its_limit_when_the_database_is_unreachable(tmp_path: Path) -> None:
    env = server_env(DATABASE_URL="postgresql://postgres@127.0.0.1:1/test", DB_CONNECT_TIMEOUT_S="2")
    result = _run_cli(["serve", "--dev", "--port", "1"], env, tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot migrate database" in result.stderr


def test_serve_stops_on_its_connect_timeout_when_the_database_never_answers(tmp_path: Path) -> None:
    """A database that accepts connections and then says nothing (a hung server, a stalled proxy): the
    start-up gives up when the connect timeout expires (the CLI run's own timeout only guards the test
    against a hang)."""
    with proxied_postgres() as (url, proxy):
        proxy.hang()
        result = _run_cli(
            ["serve", "--dev", "--port", "1"],
            server_env(DATABASE_URL=url, DB_CONNECT_TIMEOUT_S="2"),
            tmp_path,
        )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot migrate database" in result.stderr
    assert "connection timeout expired" in result.stderr


def test_migrate_says_what_it_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = server_env(DATABASE_URL=f"sqlite:///{tmp_path / 'm.sqlite3'}")
    first = _run_cli(["migrate"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "schema upgraded from empty to revision 0003" in first.stdout
    again = _run_cli(["migrate"], env, tmp_path)
    assert "already at revision 0003, nothing to do" in again.stdout


def test_migrate_without_create_rights_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = postgres_url_or_skip()
    role = f"kcds_nocreate_{uuid.uuid4().hex[:8]}"
    with fresh_postgres_schema() as url:
        schema = url.split("search_path%3D")[-1]
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE ROLE "{role}" LOGIN')
            conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        try:
            limited = url.replace("postgres@", f"{role}@", 1)
            result = _run_cli(["migrate"], server_env(DATABASE_URL=limited), tmp_path)
        finally:
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f'REVOKE ALL ON SCHEMA "{schema}" FROM "{role}"')
                conn.execute(f'DROP ROLE "{role}"')
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot migrate database" in lines[0]
    assert "InsufficientPrivilege" in lines[0]


def test_main_reports_config_errors_in_process(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KETAMINE_CDS_DATABSE_URL", "x")
        assert main(["migrate"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("DRAIN_S", "nan"),  # a drain of nan seconds never ends: SIGTERM would never stop the service
        ("STORAGE_WAIT_S", "inf"),
        ("FHIR_TIME_BUDGET_S", "-inf"),
        ("OUTBOX_INTERVAL_S", "NaN"),
        ("REQUEST_TIME_BUDGET_S", "infinity"),
    ],
)
def test_seconds_must_be_finite(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=f"KETAMINE_CDS_{variable} must be a finite number"):
        load_settings(environ={"KETAMINE_CDS_DEV_MODE": "true", f"KETAMINE_CDS_{variable}": raw})


def test_malloc_arenas_have_a_ceiling() -> None:
    dev = {"KETAMINE_CDS_DEV_MODE": "true"}
    assert load_settings(environ={**dev, "KETAMINE_CDS_MALLOC_ARENA_MAX": "1024"}).malloc_arena_max == 1024
    with pytest.raises(ConfigError, match="KETAMINE_CDS_MALLOC_ARENA_MAX must be at most 1024"):
        load_settings(environ={**dev, "KETAMINE_CDS_MALLOC_ARENA_MAX": "1025"})
