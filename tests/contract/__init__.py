"""Contract tests: one suite that every ``StateStore`` implementation must pass."""
