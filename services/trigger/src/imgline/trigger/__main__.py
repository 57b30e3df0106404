"""``imgline-trigger``: turns signed push events of GitHub, GitLab and Gitea/Forgejo, and push
messages on a forge's bus (Pagure, Fedora dist-git), into ``build.requested``. Reads the TOML
config (``IMGLINE_CONFIG``) and listens until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from imgline.core import logs
from imgline.core.bus.metrics import BusMetrics, serve_configured
from imgline.core.bus.publisher import Publisher
from imgline.core.config import BusSettings, load_settings
from imgline.core.errors import ConfigError, ImglineError
from imgline.core.service import service_config
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildRequestedV1
from imgline.trigger.adapters.forgebus import ForgeBusConsumer
from imgline.trigger.adapters.http import WEBHOOK_PATH, make_app
from imgline.trigger.domain.forges import Forge
from imgline.trigger.domain.rules import Seen, load_rules
from imgline.trigger.forgebus import ForgeBus, ForgeBusMetrics
from imgline.trigger.settings import TriggerConfig
from imgline.trigger.webhook import Webhook, WebhookMetrics

log = logging.getLogger("imgline.trigger")


def _secrets(config: TriggerConfig) -> dict[Forge, str]:
    secrets: dict[Forge, str] = {}
    for forge, path in config.secret_files.items():
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"secret_files.{forge}: cannot read {path}: {exc.strerror}") from exc
        if len(secret) < 16:
            raise ConfigError(f"secret_files.{forge}: the secret in {path} is shorter than 16")
        secrets[forge] = secret
    return secrets


@dataclass
class Trigger:
    """What ``main`` runs: the webhook app, the bus consumer when configured, the publisher."""

    app: web.Application
    config: TriggerConfig
    publisher: Publisher
    forge_bus: ForgeBusConsumer | None = None


def build_app(settings: BusSettings) -> Trigger:
    """The webhook app, the forge bus consumer and what they publish with, from settings."""
    config, url = service_config(settings, TriggerConfig)
    try:
        text = config.rules_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"rules_file: cannot read {config.rules_file}: {exc.strerror}") from exc
    rules = load_rules(text, str(config.rules_file))
    metrics = BusMetrics("trigger")
    publisher = Publisher(settings, url, metrics)

    def publish(req: p.BuildRequested) -> None:
        publisher.publish(BuildRequestedV1.from_payload(req, settings.topic_prefix))

    seen = Seen(config.repeat_memory, config.repeat_window_seconds, time.monotonic)
    webhook = Webhook(rules, _secrets(config), seen, publish, WebhookMetrics(metrics.registry))
    consumer = None
    # the series exists (at zero) without a forge bus too: dashboards and alerts need no case
    forge_metrics = ForgeBusMetrics(metrics.registry)
    if config.forge_bus is not None:
        bus = config.forge_bus
        forge_bus = ForgeBus(
            bus.format,
            rules,
            seen,
            publish,
            max_body_bytes=bus.max_body_bytes,
            metrics=forge_metrics,
        )
        consumer = ForgeBusConsumer(bus, settings, forge_bus.handle, settings.retry_delay_seconds)
    log.info("%d rule(s) from %s", len(rules.rule), config.rules_file)
    serve_configured(metrics.registry, settings)
    return Trigger(make_app(webhook, config.max_body_bytes), config, publisher, consumer)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgline-trigger", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML file (default: $IMGLINE_CONFIG)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    try:
        settings = load_settings(BusSettings, args.config, service="trigger")
        trigger = build_app(settings)
    except ImglineError as exc:
        print(f"imgline-trigger: {exc}", file=sys.stderr)
        return 2
    config = trigger.config
    consumer = trigger.forge_bus
    thread = None
    if consumer is not None:
        # pika is blocking: the consumer has a thread of its own; run_app's SIGTERM handler
        # ends the webhook, then the consumer is stopped between two messages.
        thread = threading.Thread(target=consumer.run, name="forge-bus", daemon=True)
        thread.start()
    log.info("webhook on http://%s:%d%s", config.listen_host, config.listen_port, WEBHOOK_PATH)
    try:
        web.run_app(trigger.app, host=config.listen_host, port=config.listen_port, print=None)
    finally:
        if consumer is not None and thread is not None:
            consumer.stop()
            thread.join(settings.shutdown_grace_seconds)
            if thread.is_alive():
                log.warning("the forge bus consumer did not stop in time; its message returns")
        trigger.publisher.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
