"""imgline tester service: integrity, content and live-boot checks of each built image.

See docs/architecture.md.
"""
