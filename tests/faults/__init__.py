"""The fault suite (issue 28): each fault is injected for real (a signal, a torn or bit-flipped file, a file-size
limit, a killed rank) on CPU with tiny models. A package, so that its modules are imported as ``faults.test_*`` and
their names cannot clash with the modules in ``tests/``."""
