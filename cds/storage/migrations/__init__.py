"""Alembic migrations for `cds.storage.store`, run in code by `Store.migrate()` (no alembic.ini needed)."""
