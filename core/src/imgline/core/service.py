"""What every service's command line does, written once: parse ``--config``/``--log-level``,
load and validate the settings, build the consumer, serve metrics, run until SIGTERM.

Services differ only in how they build their consumer, and in how they validate their
``[consumer_config]`` (a ``ConfigError`` there exits 2 with the reason, before any connection).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from imgline.core import logs
from imgline.core.bus import Consumer
from imgline.core.bus.metrics import serve_configured
from imgline.core.config import BusSettings, load_settings
from imgline.core.errors import ConfigError, ImglineError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def service_config(settings: BusSettings, model: type[ConfigT]) -> tuple[ConfigT, str]:
    """The validated ``[consumer_config]`` and the broker URL, or a ``ConfigError``."""
    try:
        config = model.model_validate(settings.consumer_config)
    except ValidationError as exc:
        raise ConfigError(f"invalid [consumer_config] for the {settings.service}: {exc}") from exc
    if not settings.amqp_url:
        raise ConfigError(
            f"the {settings.service} needs a broker: set amqp_url or IMGLINE_AMQP_URL"
        )
    return config, settings.amqp_url


def run_service(
    service: str,
    description: str | None,
    build_consumer: Callable[[BusSettings], Consumer],
    argv: Sequence[str] | None = None,
) -> int:
    """The body of ``imgline-<service>``: 0 after a clean shutdown, 2 on bad configuration."""
    prog = f"imgline-{service}"
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, help="TOML file (default: $IMGLINE_CONFIG)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    try:
        settings = load_settings(BusSettings, args.config, service=service)
        consumer = build_consumer(settings)
    except ImglineError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    serve_configured(consumer.metrics.registry, settings)
    consumer.install_signal_handlers()
    consumer.run()
    return 0
