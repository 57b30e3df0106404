"""Pure test logic: the test plan, result bookkeeping, ordering. No I/O here."""
