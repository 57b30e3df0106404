"""imgline updater: the agent on each host (docs/updater.md).

It installs a host from an image, applies each new release of its stream as a new LVM thin
layer, boots it with a boot counter and rolls back on its own when the new layer is unhealthy.

Modules: ``settings`` (host config), ``domain/`` (pure decisions: policy, journal, /etc merge,
boot entries), ``adapters/`` (lvm2, the image file, boot loaders, mounts), ``apply`` and
``install`` (the journaled steps), ``health`` (the checks that mark a boot good), ``agent``
(bus hint + pull timer + TUF client + reports), ``__main__`` (the ``imgline-updater`` CLI).
"""
