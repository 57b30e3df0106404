"""``imgline-publisher``: consume image.tested and host reports (default), ``serve`` the
repository over HTTP, or change a staged ``rollout`` by hand.

Reads the TOML config (``IMGLINE_CONFIG``); wiring only.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from functools import partial
from pathlib import Path

from imgline.core import logs
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.bus import Consumer
from imgline.core.bus.stage import StageHandler
from imgline.core.config import BusSettings, load_settings
from imgline.core.crashpoint import crash_hook
from imgline.core.errors import ConfigError, ImglineError
from imgline.core.service import run_service, service_config
from imgline.core.trust.keys import KeyDir
from imgline.publisher import http, rolloutcli
from imgline.publisher.adapters.repo import Repository
from imgline.publisher.domain import rollout
from imgline.publisher.handlers import PublishMetrics, PublishStage, StoreVerdicts
from imgline.publisher.repometrics import RepositoryCollector
from imgline.publisher.rollouts import ReportLog, RolloutController
from imgline.publisher.settings import PublisherConfig
from imgline.schemas.messages import HostRolledBackV1, HostUpgradedV1, ImageTestedV1

log = logging.getLogger(__name__)

#: A fault drill's crash point: the publish step after which the process is SIGKILLed
#: (``image_linked``, ``targets_placed``, ``committed``; see ``adapters.repo``).
CRASH_ENV = "IMGLINE_PUBLISHER_CRASH_AT"


def make_repository(config: PublisherConfig) -> Repository:
    """The repository, checked to exist, verify and be signable before anything is consumed."""
    try:
        repo = Repository(
            config.repo_dir,
            KeyDir(config.keys_dir),
            config.base_url,
            keep=config.keep,
            keep_per_stream=config.keep_per_stream,
            layout_=config.install,
            expiry=config.expiry,
            crash=crash_hook(CRASH_ENV),
            first_wave=partial(rollout.first_wave, config.rollout),
        )
        repo.tuf.check_keys(repo.load())  # a missing or unreadable key fails now, by role
        repo.refresh()
    except ImglineError as exc:
        raise ConfigError(f"repository: {exc}") from exc
    return repo


class RefreshTimer:
    """Re-signs what is due on a timer, so hosts never meet an expired timestamp while the
    publisher runs; a failed run is logged and retried at the next tick."""

    def __init__(self, repository: Repository, interval: float) -> None:
        self.repository = repository
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tuf-refresh", daemon=True)

    def start(self) -> RefreshTimer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.repository.refresh()
            except Exception:
                log.exception("re-signing the repository failed; retrying in %ss", self.interval)


def build_consumer(settings: BusSettings) -> Consumer:
    """The publisher's consumer with its handler, from validated settings."""
    config, url = service_config(settings, PublisherConfig)
    repository = make_repository(config)
    consumer = Consumer(settings, url)
    consumer.metrics.registry.register(RepositoryCollector(repository.load))
    RefreshTimer(repository, config.refresh_interval_seconds).start()
    stage = PublishStage(
        config,
        repository,
        StoreVerdicts(LocalArtifactStore(config.store_dir)),
        topic_prefix=settings.topic_prefix,
        metrics=PublishMetrics(consumer.metrics.registry),
    )
    handler = StageHandler(
        stage,
        work_dir=config.work_dir,
        lock_dir=config.work_dir / ".locks",
        publish=consumer.publisher.publish,
    )
    consumer.on(ImageTestedV1, handler)
    controller = RolloutController(
        repository, config.rollout, ReportLog(repository.tuf.state_dir / "rollout")
    ).start()
    consumer.on(HostUpgradedV1, controller.on_upgraded)
    consumer.on(HostRolledBackV1, controller.on_rolled_back)
    return consumer


def serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imgline-publisher serve")
    parser.add_argument("--config", type=Path, help="TOML file (default: $IMGLINE_CONFIG)")
    parser.add_argument("--host", help="default: serve_host from the config")
    parser.add_argument("--port", type=int, help="default: serve_port from the config")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    try:
        settings = load_settings(BusSettings, args.config, service="publisher")
        config = PublisherConfig.model_validate(settings.consumer_config)
    except (ImglineError, ValueError) as exc:
        print(f"imgline-publisher serve: {exc}", file=sys.stderr)
        return 2
    config.repo_dir.mkdir(parents=True, exist_ok=True)
    http.serve_forever(
        config.repo_dir, args.host or config.serve_host, args.port or config.serve_port
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"]:
        return serve(args[1:])
    if args[:1] == ["rollout"]:
        return rolloutcli.main(args[1:])
    return run_service("publisher", __doc__, build_consumer, args)


if __name__ == "__main__":
    raise SystemExit(main())
