"""The one layer that knows SQL: tables, named query functions, migrations.

Query functions take a Connection inside a transaction the caller owns; they never
commit and never swallow errors.
"""
