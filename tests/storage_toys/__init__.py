"""Toy plugins with database migrations, for the storage tests (each its own branch)."""
