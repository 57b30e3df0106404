"""Prometheus metrics of the bus, per service and topic, on a registry the caller owns."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from imgline.core.config import BusSettings

log = logging.getLogger(__name__)

HANDLER_BUCKETS = (0.005, 0.05, 0.25, 1, 5, 30, 120, 600, 1800, 3600)
#: From a message's emitted_at to its handler's start: the bus's share of a pipeline's time.
DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 30, 300, 3600)


class BusMetrics:
    """Counters a dashboard needs to see a pipeline stage: what came in, failed, was given up."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["service", "topic"]
        self.consumed = Counter(
            "imgline_messages_consumed",
            "Deliveries handled to completion",
            labels,
            registry=self.registry,
        )
        self.failed = Counter(
            "imgline_messages_failed",
            "Handler failures (each attempt)",
            [*labels, "kind"],
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "imgline_messages_dead_lettered",
            "Messages given up and sent to the dead-letter queue",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self.published = Counter(
            "imgline_messages_published",
            "Messages published and confirmed by the broker",
            labels,
            registry=self.registry,
        )
        self.handler_seconds = Histogram(
            "imgline_handler_seconds",
            "Time spent in the handler",
            labels,
            buckets=HANDLER_BUCKETS,
            registry=self.registry,
        )
        self.delay_seconds = Histogram(
            "imgline_message_delay_seconds",
            "From the sender's emitted_at to the handler's start (queueing and transfer)",
            labels,
            buckets=DELAY_BUCKETS,
            registry=self.registry,
        )
        self.connected = Gauge(
            "imgline_consumer_connected",
            "1 while the service is attached to its queue, 0 while it reconnects or stops",
            ["service"],
            registry=self.registry,
        )
        self.connects = Counter(
            "imgline_broker_connects",
            "Broker sessions opened; more than one means the broker went away in between",
            ["service"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "imgline_messages_in_flight",
            "Deliveries being handled now",
            ["service"],
            registry=self.registry,
        )

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Expose ``/metrics`` over HTTP; returns the bound port (``0`` picks a free one)."""
        return serve_metrics(self.registry, port, addr)


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> int:
    """``/metrics`` of ``registry`` on a daemon thread; returns the bound port."""
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    bound: int = server.server_address[1]
    return bound


def serve_configured(registry: CollectorRegistry, settings: BusSettings) -> int | None:
    """``/metrics`` where ``metrics_port`` and ``metrics_host`` say, logged; None when no port
    is set (a service without metrics)."""
    if settings.metrics_port is None:
        return None
    port = serve_metrics(registry, settings.metrics_port, settings.metrics_host)
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
    return port
