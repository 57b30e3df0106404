"""The builder's only code that touches the world: git, build backends, the artefact store."""
