"""Pure build logic: plans, versions, naming. No subprocess, AMQP, network or file I/O here."""
