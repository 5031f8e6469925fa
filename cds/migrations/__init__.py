"""Alembic migrations for `cds.store`, run in code by `Store.migrate()` (no alembic.ini needed)."""
