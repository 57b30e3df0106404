"""``imgline-builder``: wiring only. Reads the TOML config (``IMGLINE_CONFIG``) and runs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from imgline.builder.adapters.lorax import LoraxBackend
from imgline.builder.adapters.mmdebstrap import MmdebstrapBackend
from imgline.builder.handlers import BuildHandler, BuildMetrics
from imgline.builder.ports import Backend
from imgline.builder.settings import BuilderConfig
from imgline.core import logs
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.bus import Consumer
from imgline.core.config import BusSettings, load_settings
from imgline.core.errors import ConfigError, ImglineError
from imgline.schemas.messages import BuildRequestedV1

log = logging.getLogger("imgline.builder")


def build_consumer(settings: BusSettings) -> Consumer:
    """The builder's consumer with its handler, from validated settings."""
    try:
        config = BuilderConfig.model_validate(settings.consumer_config)
    except ValidationError as exc:
        raise ConfigError(f"invalid [consumer_config] for the builder: {exc}") from exc
    if not settings.amqp_url:
        raise ConfigError("the builder needs a broker: set amqp_url or IMGLINE_AMQP_URL")
    consumer = Consumer(settings, settings.amqp_url)
    timeout = float(config.build_timeout_seconds)
    backends: dict[str, Backend] = {
        "mmdebstrap": MmdebstrapBackend(config.suite, config.cache_dir, config.mirror, timeout),
        "livemedia-creator": LoraxBackend(timeout),
    }
    handler = BuildHandler(
        config,
        LocalArtifactStore(config.store_dir),
        backends,
        publish=consumer.publisher.publish,
        topic_prefix=settings.topic_prefix,
        metrics=BuildMetrics(consumer.metrics.registry),
    )
    consumer.on(BuildRequestedV1, handler)
    return consumer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgline-builder", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML file (default: $IMGLINE_CONFIG)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    try:
        settings = load_settings(BusSettings, args.config, service="builder")
        consumer = build_consumer(settings)
    except ImglineError as exc:
        print(f"imgline-builder: {exc}", file=sys.stderr)
        return 2
    if settings.metrics_port is not None:
        port = consumer.metrics.serve(settings.metrics_port)
        log.info("metrics on http://127.0.0.1:%d/metrics", port)
    consumer.install_signal_handlers()
    consumer.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
