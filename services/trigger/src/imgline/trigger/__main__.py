"""``imgline-trigger``: turns signed push events of GitHub, GitLab and Gitea/Forgejo into
``build.requested``. Reads the TOML config (``IMGLINE_CONFIG``) and listens until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from imgline.core import logs
from imgline.core.bus.metrics import BusMetrics
from imgline.core.bus.publisher import Publisher
from imgline.core.config import BusSettings, load_settings
from imgline.core.errors import ConfigError, ImglineError
from imgline.core.service import service_config
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildRequestedV1
from imgline.trigger.adapters.http import WEBHOOK_PATH, make_app
from imgline.trigger.domain.forges import Forge
from imgline.trigger.domain.rules import Seen, load_rules
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


def build_app(settings: BusSettings) -> tuple[web.Application, TriggerConfig, Publisher]:
    """The webhook app and what it publishes with, from validated settings."""
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
    log.info("%d rule(s) from %s", len(rules.rule), config.rules_file)
    if settings.metrics_port is not None:
        port = metrics.serve(settings.metrics_port, settings.metrics_host)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
    return make_app(webhook, config.max_body_bytes), config, publisher


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgline-trigger", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML file (default: $IMGLINE_CONFIG)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    try:
        settings = load_settings(BusSettings, args.config, service="trigger")
        app, config, publisher = build_app(settings)
    except ImglineError as exc:
        print(f"imgline-trigger: {exc}", file=sys.stderr)
        return 2
    log.info("webhook on http://%s:%d%s", config.listen_host, config.listen_port, WEBHOOK_PATH)
    try:
        web.run_app(app, host=config.listen_host, port=config.listen_port, print=None)
    finally:
        publisher.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
