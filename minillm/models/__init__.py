"""Model construction helpers (randomly initialised T5 checkpoints for offline tests and smoke runs)."""
