"""Shared pytest configuration: registers the fixture modules in tests/support."""

pytest_plugins = ["tests.support.postgres"]
