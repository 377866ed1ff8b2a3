"""Alembic migrations of the store, shipped with the package (no alembic.ini needed):
`Database.create_schema()` and `breachwatch db upgrade` run them programmatically on the
Database's own engine. New revision: `breachwatch.store.migrate.new_revision("message")`."""
