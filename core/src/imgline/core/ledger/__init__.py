"""The ledger: every pipeline event kept in one SQLite file, so an operator can trace a build
from its request to the hosts that run it (``imgline status``) and Prometheus can count the
fleet. The ``imgline-ledger`` service writes it; the CLI only reads it (docs/operations.md).
"""
