"""imgline builder service: kickstart to liveimg (docs/architecture.md)."""
