"""The ledger: every pipeline event, kept, so operators can trace a build and see the fleet."""
