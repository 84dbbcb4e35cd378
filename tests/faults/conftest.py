"""Fixtures of the fault suite. Those of ``tests/conftest.py`` (``tiny_setup``, ``shared_anli``, ...) apply here too:
pytest applies a conftest to every folder below it."""
