"""Durable node state: the SQLite store, its records and queries, retention."""
