"""The store: SQLite by default, PostgreSQL for several nodes sharing one queue."""
