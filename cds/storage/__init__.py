"""Persistence: feedback, issued cards and audit (SQLAlchemy), shared state across workers, migrations."""
