"""The tiny pipeline and its finished run are shared fixtures of tests/conftest.py (the report tests use them too)."""
