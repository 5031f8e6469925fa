"""Alembic environment for the ketamine-cds store.

Normally run by `cds.storage.store.Store.migrate()`, which passes an open connection (already inside the write
transaction that serialises concurrent migrations) in ``config.attributes["connection"]``.

Developers write a new revision the same way, in code (no alembic.ini anywhere)::

    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "cds/migrations")
    cfg.set_main_option("sqlalchemy.url", "sqlite:///dev.sqlite3")  # a database at the current head
    cfg.set_main_option("file_template", "r%%(rev)s_%%(slug)s")  # module names mypy accepts
    command.revision(cfg, message="what changed", autogenerate=True, rev_id="0002")

and review the generated script (SQLite uses batch mode, so ALTERs are rewritten as table copies).
``command.upgrade(cfg, "head", sql=True)`` prints the SQL for a DBA instead of running it. Without
``sqlalchemy.url`` the URL comes from ``-x database_url=...`` or ``KETAMINE_CDS_DATABASE_URL``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy.engine import Connection

from cds.storage.store import Store, metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things in place
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _database_url() -> str:
    x_args = context.get_x_argument(as_dictionary=True)
    return (
        x_args.get("database_url")
        or context.config.get_main_option("sqlalchemy.url")
        or os.environ.get("KETAMINE_CDS_DATABASE_URL")
        or "sqlite:///ketamine-cds.sqlite3"
    )


def run_migrations_offline() -> None:
    context.configure(url=_database_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
        return
    store = Store.open(_database_url())
    try:
        with store.engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        store.close()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
