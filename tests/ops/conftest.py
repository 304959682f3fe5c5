"""Fixtures for the ops tests; the fakes live in _ops_fakes.py (importable by the test modules)."""

from _ops_fakes import admin  # noqa: F401 - the fixture

