"""Alembic migrations of the registry, run from the package (no alembic.ini needed)."""
