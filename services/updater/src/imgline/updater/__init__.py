"""imgline updater service: the host agent; built in its own issue (docs/architecture.md)."""
