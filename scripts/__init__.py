"""Operator and developer scripts; Python ones are importable (tests drive scripts.localstack)."""
