"""Optional atheris (libFuzzer) harnesses for the parsers; see harness.py."""
