"""The tester's code that touches the world: image files, qemu, the artefact store."""
