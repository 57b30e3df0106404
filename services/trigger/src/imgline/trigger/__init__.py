"""imgline trigger service: git pushes to build requests; built in its own issue.

See docs/architecture.md.
"""
