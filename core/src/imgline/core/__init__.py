"""imgline-core: what every imgline service shares."""
