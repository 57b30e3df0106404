"""imgline publisher service: tested images into the signed TUF repository (docs/repository.md)."""
