"""Test helpers shipped as fakes and fixtures: real PostgreSQL, leak scanning. Side: tests."""
