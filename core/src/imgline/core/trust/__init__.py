"""The signed repository (The Update Framework, TUF): what the publisher writes and hosts read.

``layout`` names roles, target paths and files (pure); ``keys`` keeps signing keys on disk;
``repository`` writes and re-signs metadata; ``client`` is what hosts and tools verify with.
The threat model and key handling are described in docs/repository.md.
"""
