"""Restores from the catalog: choose a verified copy, stream it back, start PostgreSQL on it."""
