"""imgline message contracts: a pydantic payload model and a fedora-messaging class per topic."""
