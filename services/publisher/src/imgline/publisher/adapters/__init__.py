"""Files and network: the repository on disk, HTTP."""
