"""``imgline-builder``: wiring only. Reads the TOML config (``IMGLINE_CONFIG``) and runs."""

from __future__ import annotations

import logging

from imgline.builder.adapters.lorax import LoraxBackend
from imgline.builder.adapters.mmdebstrap import MmdebstrapBackend
from imgline.builder.adapters.rootcache import root_cache
from imgline.builder.handlers import BuildMetrics, build_handler
from imgline.builder.ports import Backend
from imgline.builder.recovery import recover
from imgline.builder.settings import BuilderConfig
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.bus import Consumer
from imgline.core.config import BusSettings
from imgline.core.service import run_service, service_config
from imgline.schemas.messages import BuildRequestedV1

log = logging.getLogger("imgline.builder")


def make_backends(config: BuilderConfig) -> dict[str, Backend]:
    """Every backend this builder offers, configured."""
    timeout = float(config.build_timeout_seconds)
    return {
        "mmdebstrap": MmdebstrapBackend(
            config.suite,
            config.cache_dir,
            config.mirror,
            timeout,
            roots=root_cache(config),
            mode=config.build_mode,
            user=config.build_user,
        ),
        "livemedia-creator": LoraxBackend(timeout, config.releasever),
    }


def build_consumer(settings: BusSettings) -> Consumer:
    """The builder's consumer with its handler, from validated settings."""
    config, url = service_config(settings, BuilderConfig)
    store = LocalArtifactStore(config.store_dir)
    recover(config, store)
    consumer = Consumer(settings, url)
    handler = build_handler(
        config,
        store,
        make_backends(config),
        publish=consumer.publisher.publish,
        topic_prefix=settings.topic_prefix,
        metrics=BuildMetrics(consumer.metrics.registry),
    )
    consumer.on(BuildRequestedV1, handler)
    return consumer


def main(argv: list[str] | None = None) -> int:
    return run_service("builder", __doc__, build_consumer, argv)


if __name__ == "__main__":
    raise SystemExit(main())
