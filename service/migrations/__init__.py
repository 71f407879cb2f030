"""Alembic migrations of the store (applied by ``service.store.Store.migrate``)."""
