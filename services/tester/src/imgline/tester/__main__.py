"""``imgline-tester``: wiring only. Reads the TOML config (``IMGLINE_CONFIG``) and runs."""

from __future__ import annotations

import logging

from imgline.core.artifacts import LocalArtifactStore
from imgline.core.bus import Consumer
from imgline.core.bus.stage import LOCKS, StageHandler
from imgline.core.config import BusSettings
from imgline.core.errors import ConfigError
from imgline.core.service import run_service, service_config
from imgline.schemas.messages import ImageBuiltV1
from imgline.tester.domain.plan import default_plan, load_plan
from imgline.tester.handlers import ImageChecks, TestMetrics, TestStage
from imgline.tester.settings import TesterConfig

log = logging.getLogger("imgline.tester")


def build_consumer(settings: BusSettings) -> Consumer:
    """The tester's consumer with its handler, from validated settings."""
    config, url = service_config(settings, TesterConfig)
    if config.plan_file is None:
        plan = default_plan()
    else:
        try:
            text = config.plan_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"test plan {config.plan_file}: {exc}") from exc
        plan = load_plan(text, str(config.plan_file))
    consumer = Consumer(settings, url)
    store = LocalArtifactStore(config.store_dir)
    stage = TestStage(
        config,
        store,
        plan,
        ImageChecks(config),
        topic_prefix=settings.topic_prefix,
        metrics=TestMetrics(consumer.metrics.registry),
    )
    handler = StageHandler(
        stage,
        work_dir=config.work_dir,
        lock_dir=store.root / LOCKS,
        publish=consumer.publisher.publish,
        keep_workdir=config.keep_workdir,
    )
    consumer.on(ImageBuiltV1, handler)
    return consumer


def main(argv: list[str] | None = None) -> int:
    return run_service("tester", __doc__, build_consumer, argv)


if __name__ == "__main__":
    raise SystemExit(main())
