"""imgline message contracts: one pydantic payload model and one fedora-messaging class per topic."""
