"""Alembic branch ``budgets``: budgets created through the admin API."""
