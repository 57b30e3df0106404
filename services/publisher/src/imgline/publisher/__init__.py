"""imgline publisher service: tested images into the signed TUF repository.

See docs/architecture.md and docs/repository.md.
"""
