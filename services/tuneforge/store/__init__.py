"""Stores: the metadata database (SQLAlchemy + Alembic) and the artifact directory."""
